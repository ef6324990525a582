"""Suite-wide settings.

Every test runs on one intra-op thread: ``make test`` runs two pytest workers on a 2-core machine, and the
tensors here are small, so a second OpenMP thread per worker gains nothing while oversubscribed threads
made small kernels up to a thousand times slower (3.5 ms instead of 4 us) on a loaded machine.

No test writes to the user's folders: thermoai's cache (the safetensors copy of SmolLM2), matplotlib's
configuration and font cache and any other library's ``$XDG_CACHE_HOME`` cache live under the
repository's ignored ``.pytest_cache`` (``d/``, pytest's own folder for plugins), so they survive between
runs (``--cache-clear`` empties them) and never touch ``~``.
"""

import os
from pathlib import Path

import pytest
import torch

# environment variable -> folder under the suite's cache; set before any test imports matplotlib or loads a model
SUITE_FOLDERS = {"THERMOAI_CACHE_DIR": "thermoai", "MPLCONFIGDIR": "matplotlib", "XDG_CACHE_HOME": "xdg-cache"}


def pytest_configure(config):
    cache = getattr(config, "cache", None)  # None with -p no:cacheprovider
    for variable, name in SUITE_FOLDERS.items():
        path = cache.mkdir(name) if cache is not None else Path(config.rootpath, ".pytest_cache", "d", name)
        path.mkdir(parents=True, exist_ok=True)
        os.environ[variable] = str(path)


@pytest.fixture(autouse=True, scope="session")
def one_intra_op_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
