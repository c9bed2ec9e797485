"""What a resumed or stopped run may rely on: the saved config a resume must match, the metrics
a kill may have torn, and the checkpoint to name (or set aside) when the loss stops being finite.
The checkpoints themselves are `minicomp.checkpoint`."""
from __future__ import annotations

import json
from dataclasses import MISSING, fields
from pathlib import Path

from .checkpoint import checkpoints, set_aside
from .config import RESUME_SAFE, TrainConfig, config_differences


def read_metrics(path: Path) -> list[dict]:
    """The records of metrics.jsonl; a line torn by a kill mid-write is dropped."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("global_step"), int):
            out.append(rec)
    return out


def check_resume_config(out: Path, cfg: TrainConfig, force: bool) -> None:
    """A resume continues the saved run: its resolved config must be the one in config.json."""
    path = out / "config.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        if force:
            return
        raise ValueError(f"--resume: cannot read the saved config {path} ({e}); --force resumes without the check") from None
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    saved = {**defaults, **saved} if isinstance(saved, dict) else saved  # fields added since: their defaults
    diffs = config_differences(saved, cfg.to_dict())
    unsafe = [d for d in diffs if d.split(".")[0] not in RESUME_SAFE]
    if unsafe or (diffs and not force):
        raise ValueError(f"--resume: the config differs from the run's saved {path} in {', '.join(diffs)}. Resume "
                         f"with the same preset and overrides, or with no --preset (the saved config is then used)" + (f"; --force allows only {', '.join(RESUME_SAFE)} to differ"
                                                                   if unsafe else "; --force accepts these"))


def poisoned_note(accelerator, out: Path, meta: dict) -> str:
    """The weights after global step meta["global_step"] gave a non-finite result. A checkpoint
    of exactly those weights would give it again on resume (the data order is fixed), so it is
    set aside; the last good checkpoint is the newest before it."""
    found, note = checkpoints(out), ""
    if found and found[-1].name == f"step-{meta['global_step']:07d}":
        if accelerator.is_main_process:
            note = f" The checkpoint of these weights was set aside as {set_aside(found[-1]).name}."
        found = found[:-1]
    accelerator.wait_for_everyone()
    last = found[-1] if found else None
    return (f"Last good checkpoint: {last} (--resume continues from it; lower the learning rate in a new run "
            f"if it diverges again).{note}" if last else f"No good checkpoint to resume from.{note}")
