"""What decides a reproduce result, as a key: the resolved config (all but what is only logged or
kept), the local model files' contents (not where they lie) and the process count."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .. import __version__
from ..config import TrainConfig

# never change a number: what is logged or kept, and which evaluations run (not what they measure)
UNKEYED = ("name", "log_every", "save_every", "keep_checkpoints", "num_workers", "eval_stages", "eval_sweep")


def _files_digest(path: Path) -> str:
    """The contents of a local model folder (or file); a hub name stands for itself."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with f.open("rb") as fh:
            if f.stat().st_size <= 64 << 20:
                h.update(fh.read())
            else:  # a large checkpoint: its size, head and tail
                h.update(str(f.stat().st_size).encode() + fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()


_DIGESTS: dict[str, str] = {}


def models_digest(cfg: TrainConfig) -> dict:
    out = {}
    for part in ("vision", "llm"):
        spec = str(cfg.model.get(part, ""))
        if spec not in _DIGESTS:
            _DIGESTS[spec] = _files_digest(Path(spec)) if Path(spec).exists() else spec
        out[part] = _DIGESTS[spec]
    return out


def _as_read(stage: dict) -> dict:
    """A stage's fields as training reads them: a native-resolution stage never reads `fixed_size`
    (two rows that differ only there, e.g. one inherited from a fixed-resolution base row, are one run)."""
    return {k: v for k, v in stage.items() if not (k == "fixed_size" and stage.get("resolution") == "native")}


def config_key(cfg: TrainConfig, procs: int, upto: int | None = None, legacy: bool = False) -> str:
    """A hash of everything that decides the weights and numbers of `cfg` through stage `upto`
    (default: all stages, i.e. the whole result). `legacy`: the key results were written under
    before fields that are never read were left out (such results stand)."""
    d = {k: v for k, v in cfg.to_dict().items() if k not in UNKEYED}
    if not legacy:
        d["stages"] = [_as_read(s) for s in d["stages"]]
    if d["parallel"] == "ddp":  # the default, and the only mode when results were first keyed: their keys stand
        del d["parallel"]
    for part in ("vision", "llm"):  # a local folder is keyed by its contents (models_digest), not by where it lies
        if Path(str(d["model"].get(part, ""))).exists():
            d["model"][part] = "local"
    if upto is not None:
        d["stages"] = d["stages"][:upto + 1]
    blob = {"config": d, "models": models_digest(cfg), "procs": procs, "minicomp": __version__}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:20]
