"""Which machine a result was measured on. CPUs round floats differently (their vector units, the
kernels PyTorch picks for them), so one config trained on two machines can differ by about a
seed's spread; each result records its machine, and the tables name them."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


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
