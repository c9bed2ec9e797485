#!/usr/bin/env bash
# The one GPU check (README, "On one GPU"; its full table in docs/benchmarks.md): the CUDA tests, then tools/gpu_check.py's table.
# About two and a half minutes on one H200 (its run of 2026-11-30). Without CUDA it says so and exits 0. Arguments go to gpu_check.py.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
if ! $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device here; nothing to check"
    exit 0
fi
$PY -m pytest -q -p no:cacheprovider -o addopts="" -k cuda tests/test_attention.py tests/test_xent.py tests/test_vision.py
tests=$?
$PY tools/gpu_check.py "$@"
table=$?
echo "CUDA tests: $([ $tests = 0 ] && echo passed || echo FAILED); checks: $([ $table = 0 ] && echo passed || echo FAILED)"
exit $(( tests || table ))
