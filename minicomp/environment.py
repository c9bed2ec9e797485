"""Where a number was made: the machine and the library versions.

CPUs round floats differently (their vector units, the kernels PyTorch picks for them), so one
config trained on two machines can differ by about a seed's spread. The libraries matter too:
the toy world is drawn by Pillow (its text through Pillow's FreeType), and a model's random
initialisation is timm's and transformers'. Reproduce results and toy build logs written since
2026-12-01 record both (the earlier ones: the machine at most); `constraints.txt` pins the
libraries the README installs (and torchvision, which timm pairs with torch)."""
from __future__ import annotations

import os
import platform
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
