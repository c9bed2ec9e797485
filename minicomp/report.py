"""The report of a training run: report.md (a table per stage) and losses.png, from metrics.jsonl.

Losses in the table are means over the first and last tenth of each stage's steps (one batch is
noisy). Exact match is shown with real images and with the blank-image control (see
`minicomp.evaluate`): a model that uses what it sees scores higher with the real ones. The last
table asks the final model at every stage's resolution: there the resolution alone varies."""
from __future__ import annotations

import json
from pathlib import Path

from .config import TrainConfig
from .stages import Stage


def stage_mode(stage: Stage) -> str:
    """A stage's resolution in words: "fixed 64px" or "native ≤64 tokens"."""
    return f"fixed {stage.fixed_size}px" if stage.resolution == "fixed" else f"native ≤{stage.max_tokens} tokens"


def write_report(out: Path, cfg: TrainConfig, meta: dict) -> str:
    """report.md (a table per stage) and losses.png from metrics.jsonl; returns the table."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, key in zip(axes, ("loss_dec", "loss_align")):
        for stage in cfg.stages:
            r = [x for x in rows if x["stage"] == stage.name]
            if r:
                ax.plot([x["global_step"] for x in r], [x[key] for x in r], label=stage.name)
        ax.set(xlabel="optimiser step", title=key)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "losses.png", dpi=110)
    plt.close(fig)
    lines = ["| stage | trains | resolution | RoPE | align | steps | minutes | loss_dec start → end | "
             "loss_align end | exact match | blank images |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in cfg.stages:
        r = [x for x in rows if x["stage"] == s.name]
        ev = meta["evals"].get(s.name)
        lines.append(f"| {s.name} | {', '.join(s.trainable)} | {stage_mode(s)} | {'on' if s.rope else 'off'} | "
                     f"{'on' if s.align else 'off'} | {len(r)} | {meta['stage_minutes'].get(s.name, 0):.1f} | "
                     + (f"{_ends(r, 'loss_dec')[0]:.3f} → {_ends(r, 'loss_dec')[1]:.3f} | "
                        f"{_ends(r, 'loss_align')[1]:.3f} | " if r else "– | – | ")
                     + (f"{ev['accuracy']:.3f} | {ev['blank']['accuracy']:.3f}" if ev else "– | –") + " |")
    table = "\n".join(lines) + _per_question([(s.name, meta["evals"][s.name]) for s in cfg.stages
                                               if s.name in meta["evals"]], "Exact match per question after each stage")
    if meta.get("by_resolution"):
        table += _per_question(list(meta["by_resolution"].items()), "The final model at each stage's resolution")
    (out / "report.md").write_text(f"# minicomp run: {cfg.name}\n\n{table}\n\n![losses](losses.png)\n\n"
                                   f"Final model: `model/` (load with `minicomp.CoMPModel.from_pretrained`). "
                                   f"Per-stage models: `stages/`. Metrics: `metrics.jsonl`.\n")
    return table


def _ends(rows: list[dict], key: str) -> tuple[float, float]:
    """Mean of `key` over the first and over the last tenth of the rows (at least one each)."""
    k = max(1, len(rows) // 10)
    return sum(r[key] for r in rows[:k]) / k, sum(r[key] for r in rows[-k:]) / k


def _per_question(evals: list[tuple[str, dict]], title: str) -> str:
    """A markdown table: one row per (name, exact-match result), all and per question, "real / blank"."""
    if not evals:
        return ""
    kinds = list(evals[0][1]["by_question"])
    head = "| | all | " + " | ".join(kinds) + " |\n|---|---|" + "---|" * len(kinds)
    body = [f"| {name} | {ev['accuracy']:.3f} / {ev['blank']['accuracy']:.3f} | "
            + " | ".join(f"{ev['by_question'][k]:.2f} / {ev['blank']['by_question'][k]:.2f}" for k in kinds) + " |"
            for name, ev in evals]
    n = evals[0][1]["n"]
    return (f"\n\n{title}, real images / blank images ({n} questions, {n // len(kinds)} of each kind):\n\n"
            + "\n".join([head, *body]))
