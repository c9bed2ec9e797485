"""The resolution sweep (the paper's Fig. 3, in miniature): exact match of one trained model
against the number of visual tokens it is given, real images beside blank ones."""
from __future__ import annotations

import re

import matplotlib.pyplot as plt


def sweep_points(sweep: dict, unit: int = 16) -> list[dict]:
    """Each sweep entry ("native ≤N tokens" or "fixed Spx") as {"label", "mode", "tokens"}: a fixed
    S px square gives (S / unit)² merged tokens, unit = patch × merge."""
    out = []
    for label in sweep:
        m = re.fullmatch(r"native ≤(\d+) tokens", label) or re.fullmatch(r"fixed (\d+)px", label)
        if m is None:
            raise ValueError(f"sweep label {label!r}: expected 'native ≤N tokens' or 'fixed Spx'")
        n = int(m.group(1))
        native = label.startswith("native")
        out.append({"label": label, "mode": "native" if native else "fixed", "tokens": n if native else (n // unit) ** 2})
    return out


def plot_sweep(sweep: dict, groups: tuple[str, ...] = ("reading", "all"), unit: int = 16,
               train_budget: int | None = None) -> plt.Figure:
    """One panel per question group: accuracy (with 95% intervals) against visual tokens, native
    budgets as a line, fixed squares as separate markers, blank images dashed, chance dotted."""
    pts = sweep_points(sweep, unit)
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 3.6), squeeze=False)
    for ax, g in zip(axes[0], groups):
        for mode, marker in (("native", "o"), ("fixed", "s")):
            sel = sorted((p for p in pts if p["mode"] == mode), key=lambda p: p["tokens"])
            if not sel:
                continue
            x = [p["tokens"] for p in sel]
            real = [sweep[p["label"]]["by_question"][g] for p in sel]
            blank = [sweep[p["label"]]["blank"]["by_question"][g]["accuracy"] for p in sel]
            y = [r["accuracy"] for r in real]
            err = [[a - r["ci"][0] for a, r in zip(y, real)], [r["ci"][1] - a for a, r in zip(y, real)]]
            ls = "-" if mode == "native" else "none"
            ax.errorbar(x, y, yerr=err, marker=marker, ls=ls, capsize=3, label=f"{mode}, real images")
            ax.plot(x, blank, marker=marker, ls="--" if mode == "native" else "none", mfc="none", color="grey",
                    label=f"{mode}, blank images")
        chance = next(iter(sweep.values()))["by_question"][g]["chance"]
        ax.axhline(chance, color="k", ls=":", lw=1, label="chance")
        if train_budget:
            ax.axvline(train_budget, color="tab:green", lw=1, alpha=0.5, label="training budget")
        ticks = sorted({p["tokens"] for p in pts})
        ax.set(xscale="log", xlabel="visual tokens per image (after the 2×2 merger)", ylabel="exact match",
               title=f"{g} questions", ylim=(0, 1))
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
