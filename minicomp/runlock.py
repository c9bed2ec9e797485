"""An exclusive lock on a run directory. Two runs writing into one directory would interleave
their metrics rows and overwrite each other's config and checkpoints, so the main process of a
run holds a lock on `<out>/.lock`, which also records its pid for the error message.

It is a POSIX record lock (`fcntl.lockf`), not an `flock`: a record lock belongs to the process
that took it. The DataLoader's workers are forked after the lock is taken, and an `flock` would
be shared with them; after the main process is killed (SIGKILL) a worker lives on for up to a
few seconds, and a `--resume` started at once would find the directory "in use". A record lock
is never inherited, and the kernel drops it when its process ends, however it ends: a stale lock
file never blocks a new run. (The one catch of record locks, that closing any descriptor of the
file drops them, does not arise: the holder opens `.lock` once.) Reentrant within one process (a
test, or a notebook, may call `train` again on the same directory after an error)."""
from __future__ import annotations

import errno
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no record locks here; runs are not locked there
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
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        if e.errno not in (errno.EACCES, errno.EAGAIN):
            raise
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
