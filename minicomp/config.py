"""Training configuration: one dataclass, named presets, and one override mechanism for YAML
files and the command line (``--set stages.II-native.max_tokens=1024``).

Every field can be overridden; an unknown key or a value of the wrong type is an error that
names the key, raised before anything is loaded or trained.
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from .stages import Stage, check_order


@dataclass
class TrainConfig:
    """Everything a run needs. `model`: CoMPConfig fields (vision, llm, alpha, …). `data`: key ->
    {"path", "image_root"} for LLaVA-format files, or {"synthetic": N, "task": "caption"|"qa"}
    for the toy world. Stage batches are global (all processes, all accumulation steps)."""
    name: str
    model: dict
    stages: list[Stage]
    data: dict[str, dict]
    global_batch: int = 256
    micro_batch: int = 4  # per process and forward pass; accumulation fills the global batch
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    pretrained: bool = True  # load the VFM's and LLM's weights (False: random, for tests)
    word_prior: str | None = "auto"  # "auto": count the captions of the Stage II data; a counts file; None: uniform
    prior_samples: int = 2000  # captions counted for "auto"
    word_prior_rule: str = "frequency"  # counts -> u_W (`minicomp.align.word_prior`): "frequency" or the authors' "softmax"
    save_every: int = 0  # optimiser steps between checkpoints (0: only at each stage's end)
    keep_checkpoints: int = 2
    log_every: int = 1
    eval_samples: int = 0  # held-out toy questions asked after each stage (0: no evaluation)
    eval_max_new_tokens: int = 6  # answers are one to three tokens
    eval_budgets: list[int] = field(default_factory=list)  # native token budgets the final model is also asked at
    eval_stages: str = "all"  # evaluate after "all" stages, or the "last" only (minicomp reproduce reads the final model)
    eval_sweep: bool = True  # the final model also at every stage's resolution and each of eval_budgets
    num_workers: int = 1  # DataLoader processes per rank: the next micro-batches are prepared while this one trains
    parallel: str = "ddp"  # across processes: "ddp" (whole replicas) or "fsdp2" (sharded, minicomp.shard)
    strict_data: bool = False  # a bad record raises, naming it, instead of being counted and skipped

    def __post_init__(self):
        _check_ranges(self)
        self.stages = [s if isinstance(s, Stage) else Stage(**s) for s in self.stages]
        check_order(self.stages)
        for s in self.stages:
            if s.data not in self.data:
                raise ValueError(f"stage {s.name}: data {s.data!r} is not in the config's data {sorted(self.data)}")
            batch = s.batch or self.global_batch
            if batch % self.micro_batch:
                raise ValueError(f"stage {s.name}: global batch {batch} is not a multiple of micro_batch "
                                 f"{self.micro_batch}")
        for key, d in self.data.items():
            if not isinstance(d, dict) or ("path" in d) == ("synthetic" in d):
                raise ValueError(f"data.{key}: expected {{'path': ..., 'image_root': ...}} or {{'synthetic': N}}, got {d!r}")
        from .comp_config import CoMPConfig
        CoMPConfig.from_dict(self.model)  # unknown model fields fail here, before anything loads

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stages"] = [asdict(s) for s in self.stages]
        return d

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r} in {[s.name for s in self.stages]}")


PARALLEL = ("ddp", "fsdp2")


def _check_ranges(cfg: "TrainConfig") -> None:
    """Every numeric field in its range, named by its key, before anything loads."""
    def number(key, v, low, high=math.inf, integer=False, low_open=False):
        ok = not isinstance(v, bool) and isinstance(v, int if integer else (int, float)) and math.isfinite(v)
        if not ok or v < low or (low_open and v == low) or v > high:
            kind = "an integer" if integer else "a finite number"
            bound = f"> {low}" if low_open else f">= {low}"
            raise ValueError(f"{key}: expected {kind} {bound}" + (f" and <= {high}" if high < math.inf else "")
                             + f", got {v!r}")
    number("global_batch", cfg.global_batch, 1, integer=True)
    number("micro_batch", cfg.micro_batch, 1, integer=True)
    number("log_every", cfg.log_every, 1, integer=True)
    number("grad_clip", cfg.grad_clip, 0, low_open=True)  # <= 0 would zero or flip the gradients
    number("warmup_ratio", cfg.warmup_ratio, 0, 1)
    number("weight_decay", cfg.weight_decay, 0)
    for key in ("save_every", "keep_checkpoints", "eval_samples", "num_workers", "seed"):
        number(key, getattr(cfg, key), 0, integer=True)
    number("prior_samples", cfg.prior_samples, 1, integer=True)
    number("eval_max_new_tokens", cfg.eval_max_new_tokens, 1, integer=True)
    if not isinstance(cfg.eval_budgets, list):
        raise ValueError(f"eval_budgets: expected a list of token budgets, got {cfg.eval_budgets!r}")
    for i, b in enumerate(cfg.eval_budgets):
        number(f"eval_budgets[{i}]", b, 1, integer=True)
    if cfg.eval_stages not in ("all", "last"):
        raise ValueError(f"eval_stages: expected 'all' or 'last', got {cfg.eval_stages!r}")
    if not isinstance(cfg.eval_sweep, bool):
        raise ValueError(f"eval_sweep: expected true or false, got {cfg.eval_sweep!r}")
    if cfg.parallel not in PARALLEL:
        raise ValueError(f"parallel: expected one of {PARALLEL}, got {cfg.parallel!r}")
    from .align import PRIOR_RULES
    if cfg.word_prior_rule not in PRIOR_RULES:
        raise ValueError(f"word_prior_rule: expected one of {PRIOR_RULES}, got {cfg.word_prior_rule!r}")


# ---- overrides ------------------------------------------------------------------------------

# fields that `--resume --force` may change: they decide what is logged, kept or measured, never
# what is trained (any other difference from the saved config.json refuses the resume)
RESUME_SAFE = ("name", "log_every", "save_every", "keep_checkpoints", "eval_samples", "eval_max_new_tokens",
               "eval_budgets", "eval_stages", "eval_sweep", "num_workers", "strict_data")


def config_differences(saved: dict, new: dict, path: str = "") -> list[str]:
    """Dotted keys whose values differ between two `TrainConfig.to_dict()`s (stages by name)."""
    out = []
    for k in sorted(set(saved) | set(new)):
        a, b, where = saved.get(k), new.get(k), f"{path}{k}"
        if k == "stages" and not path and isinstance(a, list) and isinstance(b, list):
            if [s.get("name") for s in a] != [s.get("name") for s in b]:
                out.append(where)
            else:
                for sa, sb in zip(a, b):
                    out += config_differences(sa, sb, f"stages.{sa['name']}.")
        elif isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, where + ".")
        elif a != b:
            out.append(where)
    return out


_OPEN = {"lr", "data", "model"}  # dicts whose keys may be added (checked by their own dataclass)


def _check_type(path: str, old, new):
    if old is None or new is None:
        return new
    if isinstance(old, bool) or isinstance(new, bool):
        if not (isinstance(old, bool) and isinstance(new, bool)):
            raise ValueError(f"{path}: expected {type(old).__name__}, got {new!r}")
        return new
    if isinstance(old, float) and isinstance(new, int):
        return float(new)
    if isinstance(old, float) and isinstance(new, str):  # YAML 1.1 reads "2e-5" as a string
        try:
            return float(new)
        except ValueError:
            pass
    if not isinstance(new, type(old)):
        raise ValueError(f"{path}: expected {type(old).__name__}, got {type(new).__name__} {new!r}")
    return new


def _merge(base: dict, update: dict, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for k, v in update.items():
        where = f"{path}{k}"
        if k == "stages" and not path:
            out[k] = _merge_stages(out[k], v)
        elif k not in out:
            if path.rstrip(".").split(".")[-1] not in _OPEN:
                raise ValueError(f"unknown config key {where!r}; known here: {sorted(out)}")
            out[k] = v
        elif isinstance(out[k], dict) and isinstance(v, dict):
            out[k] = _merge(out[k], v, where + ".")
        else:
            out[k] = _check_type(where, out[k], v)
    return out


def _merge_stages(stages: list[dict], update) -> list[dict]:
    """Stages are addressed by name: {"III": {"lr": {...}}}; a list replaces them all."""
    if isinstance(update, list):
        return update
    if not isinstance(update, dict):
        raise ValueError(f"stages: expected a mapping of stage name to fields, got {update!r}")
    known = [s["name"] for s in stages]
    drop = [n for n, v in update.items() if v is None]  # "stages.III: null" removes a stage
    out = []
    for s in stages:
        if s["name"] in drop:
            continue
        out.append(_merge(s, update[s["name"]], f"stages.{s['name']}.") if s["name"] in update else s)
    unknown = sorted(set(update) - set(known))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown} in overrides; this preset has {known}")
    return out


def parse_set(items: list[str]) -> dict:
    """["a.b=1", "stages.III.lr.llm=1e-5"] -> nested dict, values parsed as YAML scalars."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if parts[0] == "stages" and len(parts) > 2 and parts[1] == "II":  # "stages.II-native" has no dot
            raise ValueError(f"--set {item!r}: stage names are I, II-fixed, II-native, III")
        d = out
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = _scalar(value)
    return out


def _scalar(text: str):
    """A command-line value as YAML would read it, except that "2e-5" is a float, not a string."""
    v = yaml.safe_load(text)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def load_config(preset: str, files: list[str | Path] = (), sets: list[str] = ()) -> TrainConfig:
    """A preset, then each YAML file, then --set items, each merged with type checks."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; presets: {sorted(PRESETS)}")
    return _overridden(PRESETS[preset]().to_dict(), files, sets)


def load_saved_config(path: str | Path, files: list[str | Path] = (), sets: list[str] = ()) -> TrainConfig:
    """A run's saved config.json (fields added since take their defaults), then each YAML file, then
    --set items: what `minicomp train --resume` continues when no preset is named."""
    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the saved config ({e})") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: expected a mapping of config fields, got {type(saved).__name__}")
    unknown = sorted(set(saved) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise ValueError(f"{path}: unknown config fields {', '.join(unknown)}")
    return _overridden(saved, files, sets)


def _overridden(d: dict, files: list[str | Path], sets: list[str]) -> TrainConfig:
    for f in files:
        update = yaml.safe_load(Path(f).read_text()) or {}
        if not isinstance(update, dict):
            raise ValueError(f"{f}: expected a mapping at the top level")
        d = _merge(d, update)
    if sets:
        d = _merge(d, parse_set(list(sets)))
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in d.items() if k in known})


# ---- presets --------------------------------------------------------------------------------

def _tiny() -> TrainConfig:
    """The toy world on a 2-core CPU, every stage and its evaluation, in under 10 minutes (two
    1-thread processes, `minicomp train --procs auto`; about 8.5 minutes measured). Stage III has
    the steps that this budget leaves (600), and the evaluation asks 400 questions (200 samples)."""
    from .toy import TOY_LLM_PATH, TOY_VFM_PATHS

    return TrainConfig(
        name="tiny",
        model={"vision": str(TOY_VFM_PATHS["vision"]), "llm": str(TOY_LLM_PATH)},
        stages=[Stage("I", {"merger": 2e-3}, "fixed", fixed_size=64, rope=False, align=True, data="caption", steps=80),
                Stage("II-fixed", {"vision": 3e-4, "merger": 2e-3, "llm": 1e-3}, "fixed", fixed_size=128,
                      data="mid", steps=100),
                Stage("II-native", {"vision": 3e-4, "merger": 2e-3, "llm": 1e-3}, "native", max_tokens=64,
                      data="mid", steps=100),
                Stage("III", {"vision": 1e-4, "merger": 1e-3, "llm": 1e-3}, "native", max_tokens=64, align=False,
                      data="qa", steps=600)],
        data={"caption": {"synthetic": 20000, "task": "caption"}, "mid": {"synthetic": 20000, "task": "mix"},
              "qa": {"synthetic": 20000, "task": "qa"}},
        global_batch=16, micro_batch=8, warmup_ratio=0.05, eval_samples=200, prior_samples=2000,
        eval_budgets=[16, 32, 64, 128, 256])


def _tiny_long() -> TrainConfig:
    """The tiny recipe with a 3,500-step Stage III (30 minutes on 2 cores, measured): where the model
    reads a document's title (0.91 against 0.10 blank at 3,500 steps, 0.01 at tiny's 600; README)."""
    cfg = _tiny()
    cfg.name = "tiny-long"
    cfg.stage("III").steps = 3500
    return cfg


def _tiny_short() -> TrainConfig:
    """The tiny recipe with an eighth of every stage's steps (10, 12, 12, 75), all else equal:
    `minicomp reproduce --preset tiny-short`, the shortened rows of issue 13's time budget."""
    cfg = _tiny()
    cfg.name = "tiny-short"
    for s in cfg.stages:
        s.steps = max(1, round(s.steps / 8))
    return cfg


def _smoke() -> TrainConfig:
    """Seconds: the tiny world with a few steps per stage (tests and CI)."""
    cfg = _tiny()
    cfg.name = "smoke"
    for s in cfg.stages:
        s.steps, s.max_tokens = 3, 16
        s.fixed_size = 64 if s.resolution == "fixed" else s.fixed_size
    cfg.data = {k: {**v, "synthetic": 64} for k, v in cfg.data.items()}
    cfg.global_batch, cfg.micro_batch, cfg.eval_samples, cfg.prior_samples = 4, 2, 6, 50
    cfg.eval_budgets = [8, 32]
    return cfg


def _paper(vision: str, stage1_size: int, llm: str = "Qwen/Qwen2.5-0.5B", name: str = "",
           parallel: str = "ddp") -> TrainConfig:
    """The paper's recipe (Tab. 11, DESIGN.md §1). Data paths are relative to --data DIR."""
    full = {"vision": 1e-4, "merger": 5e-3, "llm": 2e-5}
    return TrainConfig(
        name=name, model={"vision": vision, "llm": llm},
        stages=[Stage("I", {"merger": 1e-3}, "fixed", fixed_size=stage1_size, rope=False, data="pretrain",
                      max_length=8000),
                Stage("II-fixed", full, "fixed", fixed_size=1008, data="mid", max_length=8000),
                Stage("II-native", full, "native", max_tokens=3000, data="mid", max_length=8000),
                Stage("III", {"vision": 2e-5, "merger": 1e-5, "llm": 1e-5}, "native", max_tokens=3000, align=False,
                      data="sft", max_length=4096, batch=128)],
        data={"pretrain": {"path": "LLaVA-Pretrain/blip_laion_cc_sbu_558k.json", "image_root": "LLaVA-Pretrain/images"},
              "mid": {"path": "LLaVA-OneVision-Mid/mid_stage.jsonl", "image_root": "LLaVA-OneVision-Mid/images"},
              "sft": {"path": "LLaVA-OneVision-SI/si_sft.jsonl", "image_root": "LLaVA-OneVision-SI/images"}},
        global_batch=256, micro_batch=4, warmup_ratio=0.03, save_every=500, keep_checkpoints=3, parallel=parallel)


PRESETS = {
    "tiny": _tiny,
    "tiny-long": _tiny_long,
    "tiny-short": _tiny_short,
    "smoke": _smoke,
    # Stage-I sizes: the VFM's pretrained size rounded to a multiple of patch × merge = 28
    "paper-1b-siglip": lambda: _paper("vit_so400m_patch14_siglip_384", 392, name="paper-1b-siglip"),
    "paper-1b-dinov2": lambda: _paper("vit_large_patch14_dinov2.lvd142m", 504, name="paper-1b-dinov2"),
    "paper-1b-aimv2": lambda: _paper("aimv2_large_patch14_336.apple_pt", 336, name="paper-1b-aimv2"),
    "paper-7b-siglip": lambda: _paper("vit_so400m_patch14_siglip_384", 392, "Qwen/Qwen2.5-7B", "paper-7b-siglip",
                                     "fsdp2"),  # 7B weights + AdamW state do not fit one GPU whole
}
