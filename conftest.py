"""Every test process, notebook kernel and subprocess runs without wandb: tests/site/sitecustomize.py
says why (about 3 s of imports per process, quiet, which the main install does not have)."""
import os
import sys
from pathlib import Path

SITE = str(Path(__file__).resolve().parent / "tests" / "site")

sys.modules.setdefault("wandb", None)  # this process; the rest inherit PYTHONPATH
os.environ["PYTHONPATH"] = os.pathsep.join([SITE, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])

