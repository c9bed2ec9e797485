"""The whole toy build: the LLM, then the SigLIP-like VFM on its tokenizer, beside the vision VFM.

Each model trains in its own single-threaded process. Single threads make the bits independent of
how many cores the machine has (a reduction split over two threads sums in another order than
over one) and, on 2 cores, two single-threaded builds side by side finish sooner than the same
builds one after another at two threads each (about 1.25× in the step loop: a small ViT does not
keep two threads busy). `jobs` only changes how many run at once, never what they compute.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Iterator

import torch

from ..environment import flush_denormals

KINDS = ("llm", "vision", "siglip")


def _worker(parent: int) -> None:
    """Each build process: one thread, and (Linux) SIGKILL when the command that started it dies,
    even by SIGKILL, so that no orphan keeps building into the output folder."""
    flush_denormals()
    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # it died before the line above
            os._exit(1)


def _build_one(kind: str, out: Path, position: int, llm_steps: int, vfm_steps: int | None,
               vfm_lr: float | None) -> dict:
    """Build one model in this process; siglip reads the tokenizer of an LLM built before it."""
    from . import TOY_LLM_PATH
    from .llm import build_toy_llm
    from .vfm import build_toy_vfm

    if kind == "llm":
        return build_toy_llm(out / "llm", steps=llm_steps, position=position)
    tokenizer = out / "llm" if (out / "llm" / "tokenizer.json").exists() else TOY_LLM_PATH
    return build_toy_vfm(kind, out / kind, tokenizer=tokenizer, steps=vfm_steps, lr=vfm_lr, position=position)


def default_jobs() -> int:
    """Two builds at once where there are two cores (there are only two independent chains)."""
    return max(1, min(2, os.cpu_count() or 1))


def build_toy_models(out: str | Path, only: list[str] | None = None, jobs: int | None = None, llm_steps: int = 400,
                     vfm_steps: int | None = None, vfm_lr: float | None = None) -> Iterator[tuple[str, dict]]:
    """Build the toy models (`only` a subset of `KINDS`) into out/<kind>, yielding (kind, build log)
    as each finishes, in `jobs` spawned single-threaded processes (default: `default_jobs()`):
    "vision" beside "llm", then "siglip" (on the new LLM's tokenizer) once "llm" is done."""
    todo = list(KINDS) if only is None else [k for k in KINDS if k in only]
    unknown = set(only or ()) - set(KINDS)
    if unknown:
        raise ValueError(f"only={sorted(unknown)}: expected some of {KINDS}")
    jobs = default_jobs() if jobs is None else jobs
    if jobs < 1:
        raise ValueError(f"jobs={jobs}: expected at least 1")
    out = Path(out)
    beside = jobs > 1 and todo != ["vision"]
    position = {"llm": 0, "siglip": 0, "vision": int(beside)}  # progress-bar rows
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked thread pools
    with ProcessPoolExecutor(max_workers=min(jobs, 2), mp_context=context, initializer=_worker,
                             initargs=(os.getpid(),)) as pool:
        submit = lambda kind: pool.submit(_build_one, kind, out, position[kind], llm_steps, vfm_steps, vfm_lr)
        running = {submit(kind): kind for kind in ("llm", "vision") if kind in todo}
        if "siglip" in todo and "llm" not in todo:
            running[submit("siglip")] = "siglip"
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                kind = running.pop(future)
                yield kind, future.result()
                if kind == "llm" and "siglip" in todo:
                    running[submit("siglip")] = "siglip"
