"""The training-step benchmark's DDP path, end to end at smoke size: two trees, each as two ranks over
gloo, taking turns (no time is asserted)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_step_against_a_revision_with_two_ddp_ranks_each():
    if subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("--against takes the old tree from git, and this copy is not a git checkout")
    p = subprocess.run([sys.executable, "benchmarks/train_step.py", "--preset", "smoke", "--steps", "3", "--procs", "2",
                        "--against", "HEAD", "--old-procs", "2"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    lines = [line.strip() for line in p.stdout.splitlines() if "samples/s" in line]
    assert len(lines) == 2, p.stdout
    assert lines[0].startswith("HEAD (old)") and "2 x 1 thread(s)" in lines[0]
    assert lines[1].startswith("this tree") and "2 x 1 thread(s)" in lines[1]
