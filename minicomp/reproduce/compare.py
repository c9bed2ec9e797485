"""Two suites side by side: which of one suite's effects another suite also resolves.

    minicomp reproduce --out reproduce/short --against reproduce   # shortened rows against the full recipe

An effect is a row's difference from its reference row (all questions, or the reading kinds); it is
*resolved* where its 95% interval excludes zero. For each effect that either suite resolves, the
comparison says whether the other resolves it too, with the same sign; and it sums each suite's
training minutes (each result's `stage_minutes`) per table.
"""
from __future__ import annotations

import json
from pathlib import Path

from .rows import TABLES
from .tables import _ci

METRICS = ("all", "reading")


def _load(out: Path, name: str) -> dict | None:
    path = out / f"{name}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not a table written by minicomp reproduce ({e})") from None


def _sign(toy: dict | None) -> int:
    """+1 or -1 where the interval excludes zero, 0 where it holds it (or there is no interval)."""
    if toy is None or toy["lo"] <= 0 <= toy["hi"]:
        return 0
    return 1 if toy["mean"] > 0 else -1


def training_minutes(out: Path, name: str) -> float | None:
    """The sum of the table's results' `stage_minutes` (stages shared between rows count once,
    where the row that trained them ran; a stage taken from the cache is not in a result's minutes)."""
    folder = out / "results" / name
    if not folder.is_dir():
        return None
    total = 0.0
    for path in sorted(folder.glob("*.json")):
        r = json.loads(path.read_text())
        total += sum((r.get("stage_minutes") or {}).values())
    return total


def compare(a: str | Path, b: str | Path, names: list[str] | None = None) -> dict:
    """Effects of the tables in both suites `a` and `b` (their `<table>.json`), resolved in either."""
    a, b = Path(a), Path(b)
    tables = []
    for name in names or list(TABLES):
        da, db = _load(a, name), _load(b, name)
        if da is None or db is None:
            missing = [str(p / f"{name}.json") for p, d in ((a, da), (b, db)) if d is None]
            raise ValueError(f"{name}: no table at {', '.join(missing)}; run minicomp reproduce {name} there first")
        rows_b = {r["row"]: r for r in db["rows"]}
        effects = []
        for ra in da["rows"]:
            rb = rows_b.get(ra["row"])
            if ra.get("ref") is None or rb is None:
                continue
            for m in METRICS:
                ta, tb = ra[f"vs_ref_{m}"]["toy"], rb[f"vs_ref_{m}"]["toy"]
                sa, sb = _sign(ta), _sign(tb)
                if sa == 0 and sb == 0:
                    continue
                verdict = ("both" if sa == sb else "opposite signs" if sa and sb else
                           f"only {a.as_posix()}" if sa else f"only {b.as_posix()}")
                effects.append({"row": ra["row"], "ref": ra["ref"], "metric": m, "a": ta, "b": tb, "resolved": verdict})
        tables.append({"table": name, "seeds": (da.get("seeds"), db.get("seeds")),
                       "preset": (da.get("preset"), db.get("preset")),
                       "training_minutes": (training_minutes(a, name), training_minutes(b, name)),
                       "effects": effects})
    return {"a": a.as_posix(), "b": b.as_posix(), "tables": tables}


def compare_markdown(data: dict, command: str) -> str:
    a, b = data["a"], data["b"]
    lines = [f"# Resolved effects: `{a}` against `{b}`", "",
             f"`{command}`. An effect is a row's difference from its reference row, in points of exact match, "
             "with its 95% interval over seeds and questions; it is resolved where the interval excludes zero. "
             "Listed: every effect that either suite resolves.", "",
             f"| table | row | vs | questions | {a} | {b} | resolved in |", "|---|---|---|---|---|---|---|"]
    for t in data["tables"]:
        for e in t["effects"]:
            lines.append(f"| {t['table']} | {e['row']} | {e['ref']} | {e['metric']} | {_ci(e['a'], True)} | "
                         f"{_ci(e['b'], True)} | {e['resolved']} |")
        if not t["effects"]:
            lines.append(f"| {t['table']} | — | — | — | none resolved | none resolved | — |")
    lines += ["", "| table | presets | seeds | training minutes (sum of `stage_minutes`) |", "|---|---|---|---|"]
    for t in data["tables"]:
        mins = " / ".join("—" if m is None else f"{m:.0f}" for m in t["training_minutes"])
        lines.append(f"| {t['table']} | {' / '.join(map(str, t['preset']))} | {' / '.join(map(str, t['seeds']))} | {mins} |")
    return "\n".join(lines) + "\n"


def write_comparison(out: str | Path, against: str | Path, names: list[str], command: str) -> list[Path]:
    """OUT/compare.md and .json for the named tables (those with rows; all of them when none is named)."""
    rowed = [n for n in (list(TABLES) if not names or names == ["all"] else names) if n in TABLES]
    if not rowed:
        raise ValueError(f"--against compares tables with rows ({', '.join(TABLES)}); got {names}")
    data = compare(out, against, rowed)
    out = Path(out)
    (out / "compare.json").write_text(json.dumps({**data, "command": command}, indent=1))
    (out / "compare.md").write_text(compare_markdown(data, command))
    return [out / "compare.json", out / "compare.md"]
