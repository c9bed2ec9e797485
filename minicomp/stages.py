"""The three-stage recipe as data (paper §2.4, Tab. 11): what each stage trains, at which
learning rates, at which resolution, with or without RoPE and the alignment loss, on which data.

Stage I: merger only, fixed low resolution, no RoPE, alignment loss on.
Stage II: everything, RoPE on; first at a fixed high resolution (II-fixed), then native (II-native).
Stage III (optional): instruction tuning at native resolution, alignment loss off.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch.nn as nn

log = logging.getLogger(__name__)
PARTS = ("vision", "merger", "llm")
STAGE_ORDER = ("I", "II-fixed", "II-native", "III")
RESOLUTIONS = ("fixed", "native")


@dataclass
class Stage:
    """One stage. `lr`: learning rate per part (vision, merger, llm); a part that is absent or
    has rate 0 is frozen. `data`: the key of the stage's data in the training config."""
    name: str
    lr: dict[str, float] = field(default_factory=dict)
    resolution: str = "native"
    fixed_size: int | None = None  # px square, for resolution="fixed"
    max_tokens: int = 3000  # merged visual tokens per image, for resolution="native"
    min_tokens: int = 4
    rope: bool = True
    align: bool = True
    data: str = "caption"
    steps: int = 0  # optimiser steps; 0: one epoch of the stage's data
    batch: int = 0  # global batch (samples per optimiser step); 0: the config's global_batch
    max_length: int | None = None  # context length in tokens

    def __post_init__(self):
        if self.name not in STAGE_ORDER:
            raise ValueError(f"stage name {self.name!r}, expected one of {STAGE_ORDER}")
        if not isinstance(self.lr, dict):
            raise ValueError(f"stages.{self.name}.lr: expected a mapping of part to learning rate, e.g. "
                             f"{{'merger': 1e-3}}; got {self.lr!r}")
        for part, v in self.lr.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"stages.{self.name}.lr.{part}: expected a finite number, got {v!r}")
        for key, v, low in (("max_tokens", self.max_tokens, 1), ("min_tokens", self.min_tokens, 1),
                            ("steps", self.steps, 0), ("batch", self.batch, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"stages.{self.name}.{key}: expected an integer >= {low}, got {v!r}")
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"stages.{self.name}: min_tokens={self.min_tokens} exceeds max_tokens={self.max_tokens}")
        for key, v in (("fixed_size", self.fixed_size), ("max_length", self.max_length)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"stages.{self.name}.{key}: expected a positive integer or null, got {v!r}")
        unknown = sorted(set(self.lr) - set(PARTS))
        if unknown:
            raise ValueError(f"stage {self.name}: learning rates for unknown part(s) {unknown}; parts: {PARTS}")
        if any(v < 0 for v in self.lr.values()):
            raise ValueError(f"stage {self.name}: negative learning rate in {self.lr}")
        if not any(v > 0 for v in self.lr.values()):
            raise ValueError(f"stage {self.name}: nothing to train (every learning rate is 0 or absent)")
        if self.resolution not in RESOLUTIONS:
            raise ValueError(f"stage {self.name}: resolution={self.resolution!r}, expected one of {RESOLUTIONS}")
        if self.resolution == "fixed" and not self.fixed_size:
            raise ValueError(f"stage {self.name}: resolution='fixed' needs fixed_size")
        if self.steps < 0 or self.batch < 0:
            raise ValueError(f"stage {self.name}: steps={self.steps} and batch={self.batch} must be >= 0")

    @property
    def trainable(self) -> tuple[str, ...]:
        return tuple(p for p in PARTS if self.lr.get(p, 0) > 0)


def check_order(stages: list[Stage]) -> None:
    """Stages must follow the recipe's order, each at most once."""
    names = [s.name for s in stages]
    if not names:
        raise ValueError("no stages to run")
    if len(set(names)) != len(names) or names != sorted(names, key=STAGE_ORDER.index):
        raise ValueError(f"stages {names} are out of order or repeated; the recipe's order is {STAGE_ORDER}")


def part_modules(model) -> dict[str, list[nn.Parameter]]:
    """The trainable parameters of each part of a CoMPModel. Parameters that the model keeps
    frozen by design (e.g. prefix tokens that are never fed) are left out."""
    frozen_by_design = {id(t) for t in (model.vision.cls_token, model.vision.reg_token)
                        if t is not None and not model.vision.feeds_prefix}
    if not getattr(model.vision, "ape", True):  # RoPE-2D alone: the APE is never added
        frozen_by_design.add(id(model.vision.pos_embed))
    parts = {"vision": [p for p in model.vision.parameters() if id(p) not in frozen_by_design],
             "merger": list(model.merger.parameters()),
             "llm": list(model.llm.parameters())}
    if model.prototypes is not None:  # the "learnable" variant's prototypes train with the merger
        parts["merger"].append(model.prototypes)
    return parts


def apply_stage(model, stage: Stage, log_fn=log.info) -> list[dict]:
    """Freeze and unfreeze the model's parts for `stage`, switch RoPE and the alignment loss, and
    return AdamW parameter groups, one per trainable part (with its own learning rate)."""
    model.vision.rope = stage.rope
    model.config.rope = stage.rope
    model.config.align = stage.align
    groups = []
    for part, params in part_modules(model).items():
        lr = stage.lr.get(part, 0.0)
        for p in params:
            p.requires_grad_(lr > 0)
        n = sum(p.numel() for p in params)
        log_fn(f"stage {stage.name}: {part:<6} {'TRAINABLE' if lr > 0 else 'FROZEN':<9} {n:>13,} parameters"
               + (f"  lr {lr:g}" if lr > 0 else ""))
        if lr > 0:
            groups.append({"params": params, "lr": lr, "name": part})
    return groups
