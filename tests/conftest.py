"""Suite-wide settings.

Every test runs on one intra-op thread: ``make test`` runs two pytest workers on a 2-core machine, and the
tensors here are small, so a second OpenMP thread per worker gains nothing while oversubscribed threads
made small kernels up to a thousand times slower (3.5 ms instead of 4 us) on a loaded machine.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_intra_op_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
