"""The paper's ablation rows as data: each row is a base recipe (the `tiny` preset by default)
plus the overrides its table shares plus the one change its row of the paper makes.

    row config = preset  ⊕  TABLES[t].shared  ⊕  the changes of the row's chain of `base` rows

A row is compared with its `ref` row (by default its `base`): the paper's difference between the
two, against the toy's. The toy's three question families stand in for the paper's three
benchmarks: documents for DocVQA, charts for ChartQA, scenes (shapes and colours, no text) for
AI2D's diagrams; "reading" (a document's title, a chart's longest bar) for the text-rich pair.
Where the toy cannot represent a row (data scale, another LLM) the row's `note` says so.

Stage names in a change are the recipe's: I, II-fixed, II-native, III (`minicomp.stages`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config import PRESETS, TrainConfig, _merge
from ..toy import TOY_VFM_PATHS

BENCHMARKS = ("AI2D", "ChartQA", "DocVQA")
TOY_FAMILY = {"AI2D": "scene", "ChartQA": "chart", "DocVQA": "document"}  # benchmark -> toy question family


@dataclass(frozen=True)
class Times:
    """A change relative to the preset: the value there, times `factor` (e.g. twice its steps)."""
    factor: int

    def __repr__(self) -> str:
        return f"×{self.factor}"


@dataclass(frozen=True)
class Row:
    """One row of a paper table. `change`: nested overrides (as in a YAML config) this row adds
    to its `base` row (None: to the table's shared overrides). `ref`: the row it is compared with
    (default: `base`). `paper`: the paper's scores by benchmark."""
    key: str
    label: str
    change: dict
    base: str | None = None
    ref: str | None = None
    paper: dict = field(default_factory=dict)
    note: str = ""

    @property
    def compare_to(self) -> str | None:
        return self.ref or self.base


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    shared: dict
    rows: tuple[Row, ...]
    mapping: str  # how the paper's setting maps onto the toy, for the table's header

    def row(self, key: str) -> Row:
        for r in self.rows:
            if r.key == key:
                return r
        raise KeyError(f"{self.name} has no row {key!r}; rows: {[r.key for r in self.rows]}")


def _stages(**per_stage) -> dict:
    """_stages(I={"rope": True}, II_fixed=…) -> {"stages": {"I": …, "II-fixed": …}}."""
    return {"stages": {k.replace("_", "-"): v for k, v in per_stage.items()}}


def _every(keys: tuple[str, ...], value: dict) -> dict:
    return {"stages": {k: dict(value) for k in keys}}


def _join(*changes: dict) -> dict:
    out: dict = {}
    for c in changes:
        out = _deep(out, c)
    return out


def _deep(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


ALL = ("I", "II-fixed", "II-native", "III")
PRETRAIN = ("I", "II-fixed", "II-native")
SIGLIP, VISION = str(TOY_VFM_PATHS["siglip"]), str(TOY_VFM_PATHS["vision"])
P = lambda a, c, d: dict(zip(BENCHMARKS, (a, c, d)))  # noqa: E731

TAB4 = Table(
    "tab4", "Tab. 4: the recipe's roadmap",
    shared={"model": {"vision": SIGLIP}},
    mapping=("SigLIP-So400M → the SigLIP-like toy VFM (the vision-only one in rows 9–10); the paper's 384, 576, "
             "768 px by stage → 64, 96, 128 px (the toy VFMs' own 64 px; 128 px is 64 merged tokens, the native "
             "budget); native resolution → native ≤64 merged tokens (the preset's budget)."),
    rows=(
        Row("1", "Baseline recipe", _join(_every(ALL, {"rope": False}), _every(PRETRAIN, {"align": False}),
                                          _stages(II_fixed={"fixed_size": 96},
                                                  II_native={"resolution": "fixed", "fixed_size": 96},
                                                  III={"resolution": "fixed", "fixed_size": 128})),
            paper=P(50.2, 29.9, 24.1),
            note="learned APE interpolated, fixed squares rising by stage (64, 96, 128 px), no RoPE, no alignment loss"),
        Row("2", "+ RoPE-2D from Stage I", _every(ALL, {"rope": True}), base="1", paper=P(51.5, 11.0, 11.4)),
        Row("3", "+ RoPE-2D from Stage II", _every(("II-fixed", "II-native", "III"), {"rope": True}), base="1",
            paper=P(55.4, 56.9, 61.6)),
        Row("4", "+ Freezing LM in Stage II", _every(("II-fixed", "II-native"), {"lr": {"llm": 0.0}}), base="3",
            paper=P(54.6, 55.4, 55.3)),
        Row("5", "+ Native resolution training",
            _stages(II_native={"resolution": "native"}, III={"resolution": "native"}), base="3",
            paper=P(56.7, 59.5, 67.7), note="row 3 with Stage II-native and III at native ≤64 tokens (row 4 was a dead end)"),
        Row("6", "+ Increase resolution in Stage II", _stages(II_fixed={"fixed_size": 128}), base="5",
            paper=P(56.2, 59.9, 68.8), note="Stage II-fixed 96 → 128 px (the paper's 768 → 1024 px)"),
        Row("7", "+ Scale up training data", _stages(II_fixed={"steps": Times(2)}, II_native={"steps": Times(2)}), base="6",
            paper=P(62.0, 65.2, 75.0),
            note="twice the Stage II steps on the same synthetic distribution: more samples, not a larger or more "
                 "varied corpus as in the paper"),
        Row("8", "+ Alignment loss", _every(PRETRAIN, {"align": True}), base="7", paper=P(61.9, 66.7, 75.9),
            note="the full CoMP recipe"),
        Row("9", "Replace with DINOv2 in #7", {"model": {"vision": VISION}}, base="7", paper=P(58.9, 61.5, 68.5),
            note="the vision-only toy VFM (DINOv2's role)"),
        Row("10", "+ Alignment loss", _every(PRETRAIN, {"align": True}), base="9", paper=P(60.0, 66.1, 71.0)),
    ))

TAB5A = Table(
    "tab5a", "Tab. 5(a): position embeddings",
    shared=_join({"model": {"vision": SIGLIP}, "eval_budgets": []}, _stages(I=None, II_fixed=None, II_native=None)),
    mapping=("The paper fine-tunes SigLIP + Qwen2-0.5B directly on instruction data: the toy runs Stage III alone "
             "(all parts trained, merger from scratch) from the SigLIP-like toy VFM. 384 px → 64 px (the VFM's own), "
             "768 px → 128 px, native → native ≤64 merged tokens (the same budget as 128 px). Each row is asked at "
             "its own resolution (no sweep)."),
    rows=(
        Row("lpe-own", "Learned PE, own res. (384 → 64 px)",
            _stages(III={"resolution": "fixed", "fixed_size": 64, "rope": False}), paper=P(48.8, 22.8, 24.3)),
        Row("lpe-high", "Learned PE, high res. (768 → 128 px)",
            _stages(III={"resolution": "fixed", "fixed_size": 128, "rope": False}), ref="lpe-own",
            paper=P(47.2, 28.8, 29.9)),
        Row("rope-high", "RoPE-2D, high res. (APE removed)",
            _join({"model": {"ape": False}}, _stages(III={"resolution": "fixed", "fixed_size": 128, "rope": True})),
            ref="lpe-high", paper=P(47.5, 8.24, 11.9)),
        Row("crope-high", "C-RoPE, high res.",
            _stages(III={"resolution": "fixed", "fixed_size": 128, "rope": True}), ref="lpe-high",
            paper=P(48.0, 32.2, 33.2)),
        Row("rope-native", "RoPE-2D, native (APE removed)",
            _join({"model": {"ape": False}}, _stages(III={"resolution": "native", "rope": True})),
            paper=P(57.8, 29.5, 34.3),
            note="the paper's native rows use 8M samples and Qwen2.5-0.5B; the toy's use the same data and LLM as "
                 "its other rows, so only the two native rows compare with each other"),
        Row("crope-native", "C-RoPE, native", _stages(III={"resolution": "native", "rope": True}),
            ref="rope-native", paper=P(61.9, 66.7, 75.9)),
    ))

TAB5B = Table(
    "tab5b", "Tab. 5(b): auxiliary losses",
    shared={"model": {"vision": SIGLIP}},
    mapping=("The tiny recipe with the SigLIP-like toy VFM; the auxiliary loss is on in Stages I–II (as in CoMP) and "
             "each row changes only what the loss is. The paper's mini-batch for the loss is 32; the toy's is 8 "
             "per process (micro_batch)."),
    rows=(
        Row("none", "w/o alignment loss", _every(PRETRAIN, {"align": False}), paper=P(51.0, 45.0, 36.9)),
        Row("contrastive", "Contrastive loss", {"model": {"variant": "infonce"}}, ref="none",
            paper=P(51.1, 45.1, 39.7)),
        Row("align", "Alignment loss", {}, ref="none", paper=P(52.3, 46.4, 43.4)),
        Row("no-prior", "w/o the prior in Eq. 9", {"model": {"variant": "no_prior"}}, ref="align",
            paper=P(51.0, 44.0, 35.4)),
        Row("learnable", "w/o word embedding (learnable prototypes)", {"model": {"variant": "learnable"}},
            ref="align", paper=P(50.8, 44.3, 35.9)),
        Row("softmax", "w/o Sinkhorn-Knopp (softmax)", {"model": {"variant": "softmax"}}, ref="align",
            paper=P(50.7, 45.6, 37.3)),
        Row("official", "Alignment loss, the authors' code (mode official, softmax prior)",
            {"model": {"sinkhorn_mode": "official"}, "word_prior_rule": "softmax"}, ref="align",
            note="not in the paper: the authors' released formulation (DESIGN.md §1)"),
    ))

TABLES = {t.name: t for t in (TAB4, TAB5A, TAB5B)}
# Tab. 3 and Fig. 3 have no rows of their own: they measure the final models of Tab. 4's rows
DERIVED = {"tab3": ("tab4", ("8", "10")), "fig3": ("tab4", ("1", "8"))}
NAMES = (*TABLES, *DERIVED)


def chain(table: Table, row: Row) -> list[Row]:
    """The row and its bases, the root first."""
    out, seen = [row], {row.key}
    while out[0].base is not None:
        base = table.row(out[0].base)
        if base.key in seen:
            raise ValueError(f"{table.name}: rows {sorted(seen)} form a cycle of bases")
        seen.add(base.key)
        out.insert(0, base)
    return out


def overrides(table: Table, row: Row) -> dict:
    """The row's overrides of the preset: the table's shared ones, then each change of its chain."""
    return _join(table.shared, *(r.change for r in chain(table, row)))


def row_config(table: Table, row: Row, preset: str = "tiny", seed: int = 0) -> TrainConfig:
    """The resolved config of (row, seed) on `preset`, checked as any config is."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; presets: {sorted(PRESETS)}")
    base = PRESETS[preset]().to_dict()
    d = _merge(base, _resolve(_join(overrides(table, row), {"seed": seed}), base))
    d["name"] = f"{table.name}-{row.key}"
    return TrainConfig(**d)


def _resolve(change: dict, base: dict) -> dict:
    """Replace each `Times` by the base config's value times its factor (stages by name)."""
    out = {}
    for k, v in change.items():
        here = base.get(k) if isinstance(base, dict) else None
        if k == "stages" and isinstance(here, list):
            here = {s["name"]: s for s in here}
        if isinstance(v, Times):
            if not isinstance(here, int):
                raise ValueError(f"{k}: ×{v.factor} needs an integer in the preset, found {here!r}")
            out[k] = here * v.factor
        elif isinstance(v, dict):
            out[k] = _resolve(v, here if isinstance(here, dict) else {})
        else:
            out[k] = v
    return out


def dotted(change: dict, prefix: str = "") -> list[str]:
    """{"stages": {"III": {"rope": True}}} -> ["stages.III.rope"]; a stage set to None is "stages.X"."""
    out = []
    for k, v in change.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out += dotted(v, key + ".")
        else:
            out.append(key)
    return out
