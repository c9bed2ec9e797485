"""When transformers' own per-file progress bars ("Loading weights", "Writing model shards") show:
for a large model they are useful; for the toy LLM they only flash by and clutter notebooks and logs."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path


def small_local_model(llm: str | os.PathLike) -> bool:
    """A local LLM folder whose weights take under 50 MB (the toy LLM): loaded or saved in a blink."""
    files = list(Path(llm).glob("*.safetensors")) if Path(llm).is_dir() else []
    return bool(files) and sum(f.stat().st_size for f in files) < 50e6


@contextlib.contextmanager
def no_progress_bars(quiet: bool = True):
    """transformers' per-file "Loading weights" / "Writing model shards" bars off, for small models
    whose bar would only flash by (they clutter notebooks and logs); large models keep theirs."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
