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
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure  # not pyplot's: never switches the caller's backend (a notebook's inline)

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    fig = Figure(figsize=(11, 3.6))
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, ("loss_dec", "loss_align")):
        for stage in cfg.stages:
            r = [x for x in rows if x["stage"] == stage.name]
            if r:
                ax.plot([x["global_step"] for x in r], [x[key] for x in r], label=stage.name)
        ax.set(xlabel="optimiser step", title=key)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "losses.png", dpi=110)
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
    table = "\n".join(lines) + per_question_table([(s.name, meta["evals"][s.name]) for s in cfg.stages
                                               if s.name in meta["evals"]], "Exact match per question after each stage")
    if meta.get("by_resolution"):
        sweep = meta["by_resolution"]
        table += per_question_table(list(sweep.items()), "The final model at every resolution")
        final = sweep.get(stage_mode(cfg.stages[-1]))
        fixed = [(k, v) for k, v in sweep.items() if k.startswith("fixed")]
        if final is not None:
            table += (f"\n\nThe final model at its own resolution ({stage_mode(cfg.stages[-1])}), per kind:\n\n"
                      + kind_table(final) + "\n\nWhat it shows (paired over the same questions):\n\n"
                      + "\n".join(effect_lines(final, *(fixed[0][::-1] if fixed else (None, "")))))
        from .viz.sweep import plot_sweep
        last = cfg.stages[-1]
        fig = plot_sweep(sweep, train_budget=last.max_tokens if last.resolution == "native" else None)
        fig.savefig(out / "sweep.png", dpi=110)
        plt.close(fig)
        table += "\n\n![resolution sweep](sweep.png)"
    if meta.get("skipped_when_read"):  # records that failed when read (named in the log), replaced by the next
        table += ("\n\nRecords skipped when read and replaced by the next record (see the log for each): "
                  + ", ".join(f"stage {k} {v}" for k, v in meta["skipped_when_read"].items()) + ".")
    from .environment import code, machine
    (out / "report.md").write_text(f"# minicomp run: {cfg.name}\n\n{table}\n\n![losses](losses.png)\n\n"
                                   f"Final model: `model/` (load with `minicomp.CoMPModel.from_pretrained`). "
                                   f"Per-stage models: `stages/`. Metrics: `metrics.jsonl`.\n\n"
                                   f"Code: {code()}; machine: {machine()} (when this report was written).\n")
    return table


def _ends(rows: list[dict], key: str) -> tuple[float, float]:
    """Mean of `key` over the first and over the last tenth of the rows (at least one each)."""
    k = max(1, len(rows) // 10)
    return sum(r[key] for r in rows[:k]) / k, sum(r[key] for r in rows[-k:]) / k


def per_question_table(evals: list[tuple[str, dict]], title: str) -> str:
    """A markdown table: one row per (name, exact-match result): all, reading, and each kind,
    "real / blank"; the header gives each kind's chance level and n."""
    if not evals:
        return ""
    bq = evals[0][1]["by_question"]
    kinds = ["all", "reading"] + [k for k in bq if k not in ("all", "reading")]
    head = ("| | " + " | ".join(f"{k} (n {bq[k]['n']}, chance {bq[k]['chance']:.2f})" for k in kinds)
            + " |\n|---|" + "---|" * len(kinds))
    body = [f"| {name} | " + " | ".join(f"{ev['by_question'][k]['accuracy']:.2f} / "
                                         f"{ev['blank']['by_question'][k]['accuracy']:.2f}" for k in kinds) + " |"
            for name, ev in evals]
    return f"\n\n{title}, real images / blank images:\n\n" + "\n".join([head, *body])


def effect_lines(final: dict, fixed: dict | None, fixed_label: str = "") -> list[str]:
    """The claims in numbers: the final model's reading accuracy against blank images and against
    the fixed low-resolution square, as paired differences with standard errors."""
    if "reading" not in final["vs_blank"]:  # fewer than two reading questions: nothing to pair
        return [f"- too few reading questions to compare ({final['by_question'].get('reading', {}).get('n', 0)})"]
    r = final["by_question"]["reading"]
    lines = [f"- reading kinds (n {r['n']}, chance {r['chance']:.2f}): real images {r['accuracy']:.3f} "
             f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}], blank images {final['blank']['by_question']['reading']['accuracy']:.3f}"]
    d = final["vs_blank"]["reading"]
    lines.append(f"- real − blank: {d['diff']:+.3f} ± {d['se']:.3f} (z = {d['z']:.1f})")
    if fixed is not None:
        from .evaluate import compare
        d = compare(final, fixed)["reading"]  # same questions as vs_blank: present
        lines.append(f"- native − {fixed_label}: {d['diff']:+.3f} ± {d['se']:.3f} (z = {d['z']:.1f}); "
                     f"{fixed_label} scores {fixed['by_question']['reading']['accuracy']:.3f}")
    return lines


def kind_table(ev: dict) -> str:
    """One result in detail: per kind n, chance, real accuracy with its Wilson 95% interval, blank."""
    rows = ["| kind | n | chance | real images [95% interval] | blank images |", "|---|---|---|---|---|"]
    for k, s in ev["by_question"].items():
        rows.append(f"| {k} | {s['n']} | {s['chance']:.2f} | {s['accuracy']:.2f} [{s['ci'][0]:.2f}, {s['ci'][1]:.2f}] | "
                    f"{ev['blank']['by_question'][k]['accuracy']:.2f} |")
    return "\n".join(rows)
