"""From (row, seed) results to the paper's tables: the toy's mean and 95% interval beside the
paper's numbers, and whether the toy agrees with the direction of the paper's result.

Intervals, over seeds and questions. Each seed asks its own held-out questions (the evaluation
is seeded), so the spread of the per-seed accuracies holds both the training's and the questions'
noise; with few seeds it is itself uncertain. The interval is therefore the wider of
- mean ± t(S−1) · sd(per-seed values) / √S   (seeds; S ≥ 2), and
- the questions' interval alone: Wilson's for an accuracy (all seeds' questions pooled), mean ±
  1.96 · the standard error of the paired per-question differences for a difference,
so that three seeds that happen to agree never claim more than their questions can show.

A row against its reference is paired: the same seed asks the same questions of both, and the
difference is taken question by question (`stats.paired_difference`) before it is pooled.
Direction: "agrees" when the toy's difference interval excludes 0 on the side of the paper's
difference, "disagrees" when it excludes 0 on the other side, "cannot tell" when it holds 0.
"""
from __future__ import annotations

import math
import statistics

from ..data.synthetic import READING
from ..stats import student_t_quantile, wilson
from .provenance import UNRECORDED
from .rows import BENCHMARKS, DERIVED, TOY_FAMILY, Table

METRICS = ("all", "reading", *(TOY_FAMILY[b] for b in BENCHMARKS))
TEXT_RICH = ("ChartQA", "DocVQA")  # the paper's text-rich pair, against the toy's reading kinds


def _members(kinds: list[str], metric: str) -> list[int]:
    if metric == "all":
        return list(range(len(kinds)))
    if metric == "reading":
        return [i for i, k in enumerate(kinds) if k in READING]
    return [i for i, k in enumerate(kinds) if k.split("/")[0] == metric]


def _interval(mean: float, per_seed: list[float], se_questions: float, clip: tuple[float, float] | None,
              questions: tuple[float, float] | None = None) -> dict:
    """The wider of the seeds' t interval and the questions' interval (`questions`, or ± 1.96 se)."""
    S = len(per_seed)
    lo, hi = questions or (mean - 1.96 * se_questions, mean + 1.96 * se_questions)
    if S >= 2:
        half = student_t_quantile(0.975, S - 1) * statistics.stdev(per_seed) / math.sqrt(S)
        lo, hi = min(lo, mean - half), max(hi, mean + half)
    if clip:
        lo, hi = max(clip[0], lo), min(clip[1], hi)
    return {"mean": mean, "lo": lo, "hi": hi, "seeds": S}


def accuracy(results: list[dict], metric: str = "all", part: str = "final", blank: bool = False) -> dict | None:
    """Mean accuracy over seeds of one row, with its 95% interval. `part`: "final", or a label
    of the resolution sweep (`by_resolution`)."""
    per_seed, n, k = [], 0, 0
    for r in results:
        ev = r["final"] if part == "final" else r["by_resolution"].get(part)
        if ev is None:
            continue
        idx = _members(ev["kinds"], metric)
        hits = ev["blank_hits" if blank else "hits"]
        if not idx:
            continue
        p = sum(hits[i] for i in idx) / len(idx)
        per_seed.append(p)
        n, k = n + len(idx), k + sum(hits[i] for i in idx)
    if not per_seed:
        return None
    S = len(per_seed)  # the questions' interval: Wilson's, of all seeds' questions pooled (sound at 0 and n hits)
    out = _interval(sum(per_seed) / S, per_seed, 0.0, (0.0, 1.0), questions=wilson(k, n))
    return {**out, "questions": n}


def difference(a: list[dict], b: list[dict], metric: str = "all") -> dict | None:
    """Row a − row b, paired by seed and question, with its 95% interval; None without a shared seed."""
    by_seed = {r["seed"]: r for r in b}
    per_seed, var, n = [], 0.0, 0
    for r in a:
        other = by_seed.get(r["seed"])
        if other is None:
            continue
        ea, eb = r["final"], other["final"]
        if ea["kinds"] != eb["kinds"]:
            raise ValueError(f"{r['table']} rows {r['row']} and {other['row']}, seed {r['seed']}: asked different "
                             f"questions; a paired difference needs the same ones")
        idx = _members(ea["kinds"], metric)
        if len(idx) < 2:
            continue
        d = [ea["hits"][i] - eb["hits"][i] for i in idx]
        mean = sum(d) / len(d)
        per_seed.append(mean)
        var += statistics.variance(d) / len(d)
        n += len(d)
    if not per_seed:
        return None
    S = len(per_seed)
    return {**_interval(sum(per_seed) / S, per_seed, math.sqrt(var) / S, None), "questions": n}


def direction(paper_diff: float | None, toy: dict | None) -> str:
    if paper_diff is None or toy is None:
        return "—"
    if toy["lo"] <= 0 <= toy["hi"]:
        return "cannot tell"
    return "agrees" if (toy["mean"] > 0) == (paper_diff > 0) else "disagrees"


def _paper_mean(scores: dict, names=BENCHMARKS) -> float | None:
    vals = [scores[b] for b in names if b in scores]
    return sum(vals) / len(vals) if vals else None


def table_data(table: Table, results: dict[str, list[dict]]) -> dict:
    """Everything a table shows, as data: per row the paper's scores, the toy's accuracies with
    intervals (and blank control), and the comparison with its reference row."""
    rows = []
    for row in table.rows:
        res = results.get(row.key, [])
        entry = {"row": row.key, "label": row.label, "paper": dict(row.paper), "note": row.note, "seeds": len(res),
                 "machines": {f"s{r['seed']}": r.get("machine", UNRECORDED) for r in res},
                 "codes": {f"s{r['seed']}": r.get("code", UNRECORDED) for r in res},
                 "toy": {m: accuracy(res, m) for m in METRICS}, "blank": accuracy(res, "all", blank=True),
                 "ref": row.compare_to}
        if row.compare_to is not None:
            ref = table.row(row.compare_to)
            for metric, names in (("all", BENCHMARKS), ("reading", TEXT_RICH)):
                p_row, p_ref = _paper_mean(row.paper, names), _paper_mean(ref.paper, names)
                p_diff = p_row - p_ref if p_row is not None and p_ref is not None else None
                toy = difference(res, results.get(ref.key, []), metric)
                entry[f"vs_ref_{metric}"] = {"paper": p_diff, "toy": toy, "direction": direction(p_diff, toy)}
        rows.append(entry)
    return {"table": table.name, "title": table.title, "mapping": table.mapping, "rows": rows}


def _ci(x: dict | None, signed: bool = False) -> str:
    if x is None:
        return "—"
    f = (lambda v: f"{100 * v:+.1f}") if signed else (lambda v: f"{100 * v:.1f}")
    return f"{f(x['mean'])} [{f(x['lo'])}, {f(x['hi'])}]"


def _where(rows: list[dict], field: str = "machines") -> str:
    """Which machine (field "machines") or code commit ("codes") trained which rows and seeds: one line
    when all ran on one."""
    where: dict[str, list[str]] = {}
    for r in rows:
        for seed, m in r.get(field, {}).items():
            where.setdefault(m, []).append(f"{r['row']}-{seed}")
    what, many = (("Machine", "Machines (their CPUs may round floats differently; a config trained on two of them can "
                   "differ by about a seed's spread)") if field == "machines" else
                  ("Code", "Code (a change that alters float rounding alone can move a number by about a seed's "
                   "spread, as another CPU does)"))
    if len(where) <= 1:
        return f"{what}: {next(iter(where), UNRECORDED)}."
    return f"{many}: " + "; ".join(f"{m}: {', '.join(runs)}" for m, runs in where.items()) + "."


def to_markdown(data: dict, command: str, preset: str) -> str:
    """The table in the paper's shape, toy columns beside (accuracies in %)."""
    seeds = max((r["seeds"] for r in data["rows"]), default=0)
    lines = [f"# {data['title']}: the toy's reproduction", "",
             f"`{command}` (preset `{preset}`, {seeds} seed(s)). Toy accuracies are exact match in %, mean over "
             "seeds with a 95% interval over seeds and questions; Δ is against the row named in *vs*, paired by "
             "seed and question. Toy families stand in for the paper's benchmarks: scene → AI2D, chart → ChartQA, "
             "document → DocVQA; *reading* (a title, a chart's longest bar) for the text-rich pair. *blank images*: the "
             "same questions with every image blank (what the LLM answers from the text alone).", "",
             f"Mapping: {data['mapping']}", "",
             "| # | row | AI2D | ChartQA | DocVQA | toy scene | toy chart | toy document | toy all | blank images | "
             "vs | paper Δ mean | toy Δ all | direction | paper Δ text-rich | toy Δ reading | direction |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        paper = [f"{r['paper'][b]:g}" if b in r["paper"] else "—" for b in BENCHMARKS]
        toy = [_ci(r["toy"][TOY_FAMILY[b]]) for b in BENCHMARKS]
        cells = [r["row"], r["label"], *paper, *toy, _ci(r["toy"]["all"]), _ci(r["blank"])]
        if r["ref"] is None:
            cells += ["—"] * 7
        else:
            a, b = r["vs_ref_all"], r["vs_ref_reading"]
            pd = lambda v: "—" if v is None else f"{v:+.1f}"  # noqa: E731
            cells += [r["ref"], pd(a["paper"]), _ci(a["toy"], signed=True), a["direction"],
                      pd(b["paper"]), _ci(b["toy"], signed=True), b["direction"]]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- **{r['row']}**: {r['note']}" for r in data["rows"] if r["note"]]
    if notes:
        lines += ["", "Notes:", *notes]
    lines += ["", _where(data["rows"]), "", _where(data["rows"], "codes")]
    counts = {}
    for r in data["rows"]:
        if r["ref"] is not None:
            d = r["vs_ref_all"]["direction"]
            counts[d] = counts.get(d, 0) + 1
    if counts:
        lines += ["", "Directions (all questions): " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + "."]
    return "\n".join(lines) + "\n"


def plot_table(data: dict):
    """Toy accuracy per row (all questions, and blank images) beside the paper's mean score."""
    from matplotlib.figure import Figure

    rows = data["rows"]
    fig = Figure(figsize=(10, 0.45 * len(rows) + 1.6))
    ax_toy, ax_paper = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    ys = list(range(len(rows)))[::-1]
    for y, r in zip(ys, rows):
        for key, colour, dy in (("all", "C0", 0.15), ("blank", "C7", -0.15)):
            x = r["toy"]["all"] if key == "all" else r["blank"]
            if x is not None:
                ax_toy.errorbar(x["mean"] * 100, y + dy, xerr=[[100 * (x["mean"] - x["lo"])], [100 * (x["hi"] - x["mean"])]],
                                fmt="o", color=colour, capsize=3)
        m = _paper_mean(r["paper"])
        if m is not None:
            ax_paper.barh(y, m, color="C1")
    ax_toy.set_yticks(ys, [f"{r['row']}: {r['label'][:38]}" for r in rows], fontsize=8)
    ax_toy.set(xlabel="toy exact match, all questions (%): blue real images, grey blank",
               title="the toy (mean, 95% interval)")
    ax_paper.set(xlabel="mean of AI2D, ChartQA, DocVQA", title="the paper")
    fig.suptitle(data["title"], fontsize=10)
    fig.tight_layout()
    return fig


def fig3_data(results: dict[str, list[dict]], rows=DERIVED["fig3"][1]) -> dict:
    """Accuracy against the native token budget (and at fixed squares) of Tab. 4's final models."""
    out = {}
    for key in rows:
        res = results.get(key, [])
        labels = list(res[0]["by_resolution"]) if res else []
        out[key] = {label: {m: accuracy(res, m, part=label) for m in ("all", "reading")}
                    | {"blank": accuracy(res, "all", part=label, blank=True)} for label in labels}
    machines = [{"row": key, "machines": {f"s{r['seed']}": r.get("machine", UNRECORDED) for r in results.get(key, [])},
                 "codes": {f"s{r['seed']}": r.get("code", UNRECORDED) for r in results.get(key, [])}} for key in rows]
    return {"table": "fig3", "title": "Fig. 3: resolution at inference (Tab. 4's final models)", "rows": out,
            "machines": _where(machines) + "\n\n" + _where(machines, "codes")}


def _tokens(label: str) -> int | None:
    """ "native ≤64 tokens" -> 64; "fixed 128px" -> (128 / 16)² merged tokens at the toy's patch × merge."""
    if label.startswith("native"):
        return int(label.split("≤")[1].split()[0])
    if label.startswith("fixed"):
        return (int(label.split()[1].rstrip("px")) // 16) ** 2
    return None


def plot_fig3(data: dict):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8))
    axes = fig.subplots(1, 2)
    budgets = sorted({_tokens(k) for by in data["rows"].values() for k in by if k.startswith("native")})
    for ax, metric in zip(axes, ("all", "reading")):
        for c, (row, by) in enumerate(data["rows"].items()):
            native = sorted((_tokens(k), v[metric]) for k, v in by.items() if k.startswith("native") and v[metric])
            if native:
                x = [t for t, _ in native]
                ax.plot(x, [100 * v["mean"] for _, v in native], "o-", color=f"C{c}", label=f"Tab. 4 row {row}, native")
                ax.fill_between(x, [100 * v["lo"] for _, v in native], [100 * v["hi"] for _, v in native],
                                color=f"C{c}", alpha=0.15)
            fixed = [(_tokens(k), v[metric], k) for k, v in by.items() if k.startswith("fixed") and v[metric]]
            for t, v, k in fixed:
                ax.errorbar(t, 100 * v["mean"], yerr=[[100 * (v["mean"] - v["lo"])], [100 * (v["hi"] - v["mean"])]],
                            fmt="s", color=f"C{c}", mfc="none", capsize=3)
        ax.set(xscale="log", xlabel="merged visual tokens per image (squares: a fixed square)",
               ylabel=f"exact match, {metric} (%)", title=metric)
        ax.set_xticks(budgets, [str(b) for b in budgets], minor=False)
        ax.set_xticks([], minor=True)  # no log-scale minor labels over the budgets
        ax.legend(fontsize=8)
    fig.suptitle(data["title"], fontsize=10)
    fig.tight_layout()
    return fig


def fig3_markdown(data: dict, command: str, preset: str) -> str:
    lines = [f"# {data['title']}: the toy's reproduction", "",
             f"`{command}` (preset `{preset}`). Exact match in % with a 95% interval over seeds and questions, at "
             "each native token budget and at the fixed squares the row's own stages trained at (so the rows list "
             "different squares; the paper's Fig. 3 limits the visual tokens of CoMP-MM-1B on DocVQA and ChartQA).", "", "![fig3](fig3.png)", ""]
    for row, by in data["rows"].items():
        lines += [f"Tab. 4 row {row}:", "", "| resolution | all | reading | blank images |", "|---|---|---|---|"]
        lines += [f"| {k} | {_ci(v['all'])} | {_ci(v['reading'])} | {_ci(v['blank'])} |" for k, v in by.items()]
        lines.append("")
    lines += [data.get("machines", f"Machine: {UNRECORDED}."), ""]
    return "\n".join(lines)

