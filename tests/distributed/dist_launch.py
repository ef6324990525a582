"""Start W processes on this machine the way ``torchrun`` does, on loopback only, with a bounded wait.

Each rank gets torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
``MASTER_ADDR=127.0.0.1``, ``MASTER_PORT``) plus ``GLOO_SOCKET_IFNAME=lo`` and one OpenMP thread. Unlike
torchrun, whose rendezvous store listens on every interface, the store's socket is bound here to
127.0.0.1 (port 0: the kernel picks a free one, so there is no port race) and handed to rank 0 as an open
file descriptor (``THERMOAI_STORE_FD``). :func:`init_process_group` is the worker side.

Outputs go to files, not pipes (a full pipe cannot block a rank while another is waited for); after
``timeout_s`` every rank still running is killed and reported as timed out.
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"


@dataclass
class RankResult:
    rank: int
    returncode: int | None  # None: killed at the timeout
    stdout: str
    stderr: str
    elapsed_s: float


def launch(argv: list[str], world_size: int, workdir: Path, timeout_s: float = 90.0,
           env: dict[str, str] | None = None) -> list[RankResult]:
    """Run ``python *argv`` as ranks 0..world_size-1; wait at most ``timeout_s`` seconds in all."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((LOOPBACK, 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    os.set_inheritable(listener.fileno(), True)
    procs, files, start = [], [], time.monotonic()
    try:
        for rank in range(world_size):
            rank_env = dict(os.environ)
            rank_env.update(env or {})
            rank_env.update({
                "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": LOOPBACK, "MASTER_PORT": str(port),
                "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            })
            rank_env.pop("THERMOAI_STORE_FD", None)
            if rank == 0:
                rank_env["THERMOAI_STORE_FD"] = str(listener.fileno())
            out = open(workdir / f"rank{rank}.out", "w+")
            err = open(workdir / f"rank{rank}.err", "w+")
            files.append((out, err))
            procs.append(subprocess.Popen([sys.executable, *argv], env=rank_env, stdout=out, stderr=err,
                                          pass_fds=(listener.fileno(),) if rank == 0 else (),
                                          start_new_session=True))
    finally:
        listener.close()  # rank 0 holds its own copy
    ended: dict[int, float] = {}
    deadline = start + timeout_s
    while len(ended) < len(procs) and time.monotonic() < deadline:
        for rank, p in enumerate(procs):
            if rank not in ended and p.poll() is not None:
                ended[rank] = time.monotonic() - start
        time.sleep(0.05)
    results = []
    for rank, (p, (out, err)) in enumerate(zip(procs, files)):
        code: int | None = p.returncode
        if rank not in ended:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
            code = None
        out.seek(0)
        err.seek(0)
        results.append(RankResult(rank, code, out.read(), err.read(), ended.get(rank, timeout_s)))
        out.close()
        err.close()
    return results


def describe(results: list[RankResult]) -> str:
    """Every rank's exit and the tail of its output, for assertion messages."""
    lines = []
    for r in results:
        lines.append(f"--- rank {r.rank}: exit {r.returncode} after {r.elapsed_s:.1f} s")
        lines.append(r.stdout[-1500:])
        lines.append(r.stderr[-3000:])
    return "\n".join(lines)


def init_process_group(timeout_s: float = 30.0) -> tuple[int, int]:
    """Worker side: the gloo process group on the store of :func:`launch` (or of torchrun, whose
    environment is the same, without ``THERMOAI_STORE_FD``). Returns ``(rank, world_size)``."""
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    fd = os.environ.get("THERMOAI_STORE_FD")
    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, rank == 0, timeout,
                          master_listen_fd=int(fd) if (rank == 0 and fd) else None)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timeout)
    return rank, world
