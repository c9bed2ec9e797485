"""An exclusive lock on a run directory. Two runs writing into one directory would interleave
their metrics rows and overwrite each other's config and checkpoints, so the main process of a
run holds an `flock` on `<out>/.lock`, which also records its pid for the error message. The
kernel drops the lock when the process ends, however it ends (even by SIGKILL): a stale lock file
never blocks a new run. Reentrant within one process (a test, or a notebook, may call `train`
again on the same directory after an error)."""
from __future__ import annotations

import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None

_HELD: dict[Path, object] = {}


def lock_run_dir(out: Path) -> None:
    """Take the lock on `out` (created if missing), or raise naming the pid that holds it."""
    key = Path(out).resolve()
    if fcntl is None or key in _HELD:
        return
    key.mkdir(parents=True, exist_ok=True)
    f = open(key / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise RuntimeError(f"{out} is in use by another run (pid {holder}): wait for it to finish, or choose "
                           f"another --out") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    _HELD[key] = f


def unlock_run_dir(out: Path) -> None:
    """Release the lock on `out` if this process holds it."""
    f = _HELD.pop(Path(out).resolve(), None)
    if f is not None:
        f.close()
