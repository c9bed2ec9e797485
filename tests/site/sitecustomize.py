"""Imported at start-up by every Python process the tests start (the root conftest.py puts this
folder on PYTHONPATH): they run as the main install (`pip install -e .`) runs, without wandb.

Only the dev extra's lmms-eval brings wandb, and timm imports it at its own import when it is there
(timm.utils.summary): about 3 s (quiet; more under load) in every process, notebook kernel and
training worker. `sys.modules["wandb"] = None` makes `import wandb` raise ImportError, as if it were
not installed, which timm, accelerate, transformers and lmms-eval all handle. A test that wants wandb
importable (tests/test_lmms.py runs lmms-eval as its users do) drops this folder from its
subprocess's PYTHONPATH. In test processes this module shadows any other `sitecustomize` on the path.
"""
import sys

sys.modules.setdefault("wandb", None)
