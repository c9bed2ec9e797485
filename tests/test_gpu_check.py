"""tools/gpu_check.py: without CUDA it skips cleanly; at toy sizes on CPU every check runs."""
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _run(*args):
    return subprocess.run([sys.executable, "tools/gpu_check.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})


def test_gpu_check_runs_every_check_at_toy_sizes_on_cpu():
    p = _run("--small", "--device", "cpu")
    assert p.returncode == 0, p.stdout + p.stderr
    table = p.stdout[p.stdout.index("| check"):]
    for check in ("vision bf16 vs fp32", "attention reference vs sdpa", "decoding loss memory",
                  "paper-1b-siglip step", "peers"):
        assert f"| {check}" in table
    assert "FAIL" not in table and table.count("| ok") == 3


def test_gpu_check_without_cuda_says_so_and_succeeds():
    if torch.cuda.is_available():
        return
    p = _run()
    assert p.returncode == 0 and "no CUDA device" in p.stdout
