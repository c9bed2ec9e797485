"""The CPU launcher of `minicomp train`: on a CPU the toy's operations are too small for several
OpenMP threads to use several cores well, so the command re-executes itself under `torchrun`,
one few-thread process per core (DDP over gloo), and each worker dies with the launcher."""
from __future__ import annotations

import ctypes
import os
import signal
import sys

from .config import TrainConfig


def cpu_processes(cfg: TrainConfig, cores: int) -> int:
    """The most processes, at most `cores`, that split every stage's micro-batches evenly."""
    fits = [n for n in range(1, max(1, cores) + 1)
            if all((s.batch or cfg.global_batch) % (cfg.micro_batch * n) == 0 for s in cfg.stages)]
    return fits[-1]


def threads_per_process(procs: int) -> int:
    """The OpenMP threads each of `procs` processes gets: this machine's cores shared evenly."""
    return max(1, (os.cpu_count() or procs) // procs)


def launch(argv: list[str], procs: int, parallel: str = "ddp") -> int:
    """Become torchrun running this command as `procs` processes on this machine (exec: the pid
    stays, so a signal to it reaches the launcher, and the workers die with it, see `die_with_launcher`)."""
    threads = threads_per_process(procs)
    print(f"training with {procs} processes x {threads} thread(s) ({parallel.upper()} on CPU; --procs 1 for one process)",
          flush=True)
    os.environ.update(OMP_NUM_THREADS=str(threads), MINICOMP_LAUNCHER=str(os.getpid()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
           "-m", "minicomp.train", *argv, "--procs", "1"]
    os.execv(sys.executable, cmd)
    return 1  # not reached


def die_with_launcher() -> None:
    """A worker started by `launch` gets SIGKILL when the launcher dies, even by SIGKILL (Linux),
    so that no orphan keeps training into the run directory."""
    launcher = os.environ.get("MINICOMP_LAUNCHER")
    if not launcher or "LOCAL_RANK" not in os.environ or not sys.platform.startswith("linux"):
        return  # not a worker of `launch`
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != int(launcher):  # it died before the line above
        print(f"minicomp: the launcher (pid {launcher}) is gone; this worker stops", file=sys.stderr)
        os._exit(1)
