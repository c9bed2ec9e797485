"""Where a number was made: the machine, the library versions, and the CPU's float mode.

CPUs round floats differently (their vector units, the kernels PyTorch picks for them), so one
config trained on two machines can differ by about a seed's spread. The libraries matter too:
the toy world is drawn by Pillow (its text through Pillow's FreeType), and a model's random
initialisation is timm's and transformers'. Reproduce results and toy build logs written since
2026-12-01 record both (the earlier ones: the machine at most), and reproduce results written since
2026-12-02 the code's commit too (`code`): the checkout's state when the result was written. A run
resumed across commits, or started from a cached stage prefix, trained its earlier steps with
whatever code ran them then, which `code` does not name. `constraints.txt` pins the
libraries the README installs (and torchvision, which timm pairs with torch).

Every minicomp process computes with subnormal floats flushed to zero (`flush_denormals`): the
same bits in the toy's training steps we compared, several times faster attention on a CPU."""
from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

# the installed distributions that decide a toy number: kernels, initialisation, tokenisation, drawing
LIBRARIES = ("torch", "timm", "transformers", "tokenizers", "accelerate", "pillow", "numpy", "safetensors")


def libraries() -> dict[str, str]:
    """{distribution: installed version} for LIBRARIES ("absent" where one is not installed)."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def machine() -> str:
    """The CPU (its name, family, model, stepping and widest vector unit), its core count and torch:
    CPUs round floats differently, so one config trained on two machines can differ by about a seed's
    spread. Recorded with each result, never keyed."""
    cpu = platform.processor() or platform.machine()
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
                    if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        flags = set(info.get("flags", "").split())
        unit = next((f for f in ("amx_tile", "avx512f", "avx2", "avx", "asimd") if f in flags), "")
        cpu = (f"{info.get('model name', cpu)} (family {info.get('cpu family', '?')}, model {info.get('model', '?')}, "
               f"stepping {info.get('stepping', '?')}{', ' + unit.split('_')[0] if unit else ''})")
    except (OSError, ValueError):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def code() -> str:
    """The minicomp source this process runs: the git commit of its checkout, with "+changes" where
    tracked files under minicomp/ differ from it, or the installed version where it is not a git
    checkout. A change of code that alters float rounding alone moves a toy number by about a seed's
    spread, as another CPU does. Recorded with each result, never keyed."""
    from . import __version__

    package = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(package.parent), *args], capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != package.parent:
            raise ValueError("minicomp lies inside another repository")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", str(package))
        return git("rev-parse", "HEAD") + ("+changes" if changed else "")
    except (OSError, ValueError, subprocess.SubprocessError):
        return f"minicomp {__version__} (not a git checkout)"


def flush_denormals() -> None:
    """Flush subnormal floats (fp32 below 1.2e-38) to zero on this process's CPU threads.

    An x86 core computes on subnormals up to ~100× slower than on normal floats, and attention
    makes them: the probabilities of far-off keys underflow (exp of a very negative score). The
    toy ViT's attention backward ran ~5× slower for it. The results do not change: a subnormal
    added to a normal fp32 number leaves it as it was, and three of the tiny preset's training
    steps give the same bits either way (tests/test_environment.py). Call it first in a process,
    before any parallel operation: OpenMP's threads take the float mode of the thread that starts
    them (called later, it reaches only the calling thread). No effect on GPUs' own arithmetic."""
    torch.set_flush_denormal(True)
