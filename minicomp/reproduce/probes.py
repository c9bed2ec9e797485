"""Tab. 3 in miniature: the VFM after CoMP. Frozen-feature probes (`assess.vfm_probes`) of each
original toy VFM and of its CoMP-trained encoder (the final models of Tab. 4 rows 8 and 10), at
the toy VFMs' own 64 px and at native resolution (≤256 patches, the higher one).

The paper's classification (ImageNet, attentive probe, 224 / 448 px) maps to the toy's
attentive-pooling attribute probe ("mean" over the world's attributes); its segmentation
(ADE20K, UperNet head, 504 / 672 px) to the toy's per-patch segmentation probe (mIoU).
"""
from __future__ import annotations

import math

from .rows import DERIVED
from .suite import Suite, _write_json, jobs_for, read_result
from .tables import UNRECORDED, _ci, _interval, _where

PAPER = {  # Tab. 3(a) ImageNet-1K top-1, 224 / 448 px; Tab. 3(b) ADE20K mIoU, 504 / 672 px
    "siglip": {"original": {"classification": (87.1, 88.2), "segmentation": (35.2, 31.6)},
               "CoMP-trained": {"classification": (86.5, 87.4), "segmentation": (49.5, 49.1)}},
    "vision": {"original": {"classification": (86.3, 87.6), "segmentation": (55.3, 55.9)},
               "CoMP-trained": {"classification": (85.7, 86.5), "segmentation": (52.7, 53.0)}},
}
PROBES = {"classification": "mean", "segmentation": "segment_miou"}
ROW_VFM = {"8": "siglip", "10": "vision"}  # Tab. 4 row -> its toy VFM
N_TEST = 300  # probe_images("test", …) in vfm_probes


def _path(suite: Suite, name: str):
    return suite.out / "results" / "tab3" / f"{name}.json"


def current_keys(suite: Suite, seeds: int) -> dict[str, tuple[str, str, dict | None]]:
    """{probe result name: (the key a current result has, which model, the Tab. 4 result it probes)}:
    each original toy VFM (keyed on its files), and each finished Tab. 4 row 8 / 10 model (keyed on
    that result's key). A probe result under another key is stale: a model since replaced."""
    from ..toy import TOY_VFM_PATHS
    from .keys import _files_digest

    out: dict[str, tuple[str, str, dict | None]] = {}
    for job in jobs_for(["tab3"], seeds, suite.preset):
        kind = ROW_VFM[job.row.key]
        out.setdefault(f"original-{kind}", (f"{_files_digest(TOY_VFM_PATHS[kind])[:20]}-probes1", "original toy VFM", None))
        done = suite.done(job)
        if done is not None:
            out[f"{job.row.key}-s{job.seed}"] = (f"{done['key']}-probes1", "CoMP-trained", done)
    return out


def run_probes(suite: Suite, seeds: int) -> None:
    """Probe each finished Tab. 4 row 8 / 10 model that has no current probe result, and each
    original toy VFM once (a fixed model: its probes do not depend on the seed of a row)."""
    import torch

    from ..assess import vfm_probes
    from ..environment import code, machine
    from ..model import CoMPModel

    wanted = current_keys(suite, seeds)
    for job in jobs_for(["tab3"], seeds, suite.preset):
        done = suite.done(job)
        if done is None:
            continue
        kind = ROW_VFM[job.row.key]
        for name in (f"{job.row.key}-s{job.seed}", f"original-{kind}"):
            key, which, _ = wanted[name]
            old = read_result(_path(suite, name))
            if old is not None and old["key"] == key:
                continue
            suite.say(f"tab3: probing the {which} of {job.slug}")
            where = {"machine": machine(), "code": code()}  # at the start, as a run's are
            torch.manual_seed(job.seed)
            model = CoMPModel.from_pretrained(suite.out / done["run"] / "model")  # run: relative to out
            _write_json(_path(suite, name), {"key": key, "vfm": kind, "seed": job.seed, **where,
                                             "probes": vfm_probes(model, which=(which,))[which]})


def tab3_data(suite: Suite, seeds: int, wanted: dict[str, str] | None = None) -> dict:
    """The probes of the models that are current (`wanted`: {name: key}, default `current_keys`);
    a stale probe result (another key) is left out, never shown."""
    if wanted is None:
        wanted = {name: key for name, (key, _, _) in current_keys(suite, seeds).items()}

    def current(name: str) -> dict | None:
        r = read_result(_path(suite, name))
        return r if r is not None and name in wanted and r.get("key") == wanted[name] else None

    rows = []
    for row in DERIVED["tab3"][1]:
        kind = ROW_VFM[row]
        trained = [r for s in range(seeds) if (r := current(f"{row}-s{s}")) is not None]
        original = current(f"original-{kind}")
        for who, res in (("original", [original] if original else []), ("CoMP-trained", trained)):
            if not res:
                continue
            entry = {"vfm": kind, "model": who, "tab4_row": row, "seeds": len(res), "paper": PAPER[kind][who],
                     "row": f"{kind} {who}",  # the Where lines name each probe "<row>-s<seed>", an original's "<row>-probe"
                     **{f"{field}s": {(f"s{r['seed']}" if who != "original" else "probe"): r.get(field, UNRECORDED)
                                      for r in res} for field in ("machine", "code")}}
            for probe, key in PROBES.items():
                for res_label, i in (("own", 0), ("higher", 1)):
                    vals = [list(r["probes"].values())[i][key] for r in res]
                    m = sum(vals) / len(vals)
                    se = math.sqrt(max(m * (1 - m), 0) / N_TEST) / math.sqrt(len(vals))
                    entry[f"{probe}_{res_label}"] = _interval(m, vals, se, (0.0, 1.0))
            rows.append(entry)
    return {"table": "tab3", "title": "Tab. 3: the VFM after CoMP (frozen-feature probes)", "rows": rows}


def tab3_markdown(data: dict, command: str, preset: str) -> str:
    lines = [f"# {data['title']}: the toy's reproduction", "",
             f"`{command}` (preset `{preset}`). Toy probes in %, mean over seeds with a 95% interval; own = 64 px "
             "(the toy VFMs' pretraining size), higher = native ≤256 patches. Paper: ImageNet top-1 at 224 / 448 px "
             "(classification) and ADE20K mIoU at 504 / 672 px (segmentation), CoMP models from Stage II; the toy's "
             "are the final models of Tab. 4 rows 8 (SigLIP-like) and 10 (vision-only), one per seed; each original toy "
             "VFM is probed once (it does not depend on a row's seed).", "",
             "| VFM | model | paper cls. own / high | toy attribute probe, own | higher | paper seg. own / high | "
             "toy segmentation mIoU, own | higher |", "|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        pc, ps = r["paper"]["classification"], r["paper"]["segmentation"]
        lines.append(f"| {'SigLIP' if r['vfm'] == 'siglip' else 'DINOv2'} → toy {r['vfm']} | {r['model']} | "
                     f"{pc[0]:g} / {pc[1]:g} | {_ci(r['classification_own'])} | {_ci(r['classification_higher'])} | "
                     f"{ps[0]:g} / {ps[1]:g} | {_ci(r['segmentation_own'])} | {_ci(r['segmentation_higher'])} |")
    lines += ["", "Where each probe ran (probe results written before 2026-12-02 did not record it):", "",
              _where(data["rows"]), "", _where(data["rows"], "codes")]
    return "\n".join(lines) + "\n"


