"""`minicomp reproduce`: the paper's ablations (Tab. 3, 4, 5a, 5b, Fig. 3) run on the toy world.

    minicomp reproduce --list                       # every row's exact overrides
    minicomp reproduce tab5a --seeds 3              # one table: reproduce/tab5a.md, .json, .png
    minicomp reproduce all --seeds 3 --out reproduce

- `rows`: the registry, each row the preset plus its table's and its own overrides;
- `suite`: the runs, cached per (row, seed) and per shared stage prefix, resumable;
- `tables`: the paper's tables with the toy's means, intervals and directions.
"""
from __future__ import annotations

import json
from pathlib import Path

from .rows import DERIVED, NAMES, TABLES, overrides, row_config
from .suite import Suite, jobs_for
from .tables import fig3_data, fig3_markdown, plot_fig3, plot_table, table_data, to_markdown

__all__ = ["NAMES", "TABLES", "list_rows", "reproduce", "write_outputs"]


def list_rows(preset: str = "tiny") -> str:
    """Every table's rows with their exact overrides of the preset (and what they are compared with)."""
    out = []
    for t in TABLES.values():
        out += [f"== {t.name}: {t.title}", f"   shared: {json.dumps(t.shared, ensure_ascii=False)}" if t.shared else "   shared: —"]
        for r in t.rows:
            row_config(t, r, preset)  # resolves, or says why not
            own = json.dumps(r.change, default=repr, ensure_ascii=False) if r.change else "(the table's shared overrides alone)"
            base = f" on row {r.base}" if r.base else ""
            vs = f"; compared with row {r.compare_to}" if r.compare_to else ""
            out.append(f"   {r.key:<13} {r.label}\n      change{base}: {own}{vs}")
            full = overrides(t, r)
            if r.base:
                out.append(f"      all overrides: {json.dumps(full, default=repr, ensure_ascii=False)}")
    for name, (t, rows) in DERIVED.items():
        out.append(f"== {name}: measured on the final models of {t} rows {', '.join(rows)}")
    return "\n".join(out)


def write_outputs(names: list[str], suite: Suite, seeds: int, command: str) -> list[Path]:
    """reproduce/<table>.md, .json and .png from the results on disk."""
    written = []
    for name in names:
        table = TABLES[DERIVED[name][0]] if name in DERIVED else TABLES[name]
        results: dict[str, list[dict]] = {}
        for job in jobs_for([name], seeds, suite.preset):
            r = suite.done(job)
            if r is not None:
                results.setdefault(job.row.key, []).append(r)
        if name == "fig3":
            data = fig3_data(results)
            md, fig = fig3_markdown(data, command, suite.preset), plot_fig3(data)
        elif name == "tab3":
            from .probes import tab3_data, tab3_markdown
            data = tab3_data(suite, seeds)
            md, fig = tab3_markdown(data, command, suite.preset), None
        else:
            data = table_data(table, results)
            md, fig = to_markdown(data, command, suite.preset), plot_table(data)
        suite.out.mkdir(parents=True, exist_ok=True)
        (suite.out / f"{name}.json").write_text(json.dumps({**data, "command": command, "preset": suite.preset,
                                                             "seeds": seeds}, indent=1))
        (suite.out / f"{name}.md").write_text(md)
        written += [suite.out / f"{name}.json", suite.out / f"{name}.md"]
        if fig is not None:
            fig.savefig(suite.out / f"{name}.png", dpi=110)
            written.append(suite.out / f"{name}.png")
    return written


def reproduce(names: list[str], seeds: int = 3, out: str | Path = "reproduce", preset: str = "tiny",
              procs: int | None = None, progress: bool = True, command: str | None = None) -> list[Path]:
    """Run what the named tables need (skipping what is done), then write their outputs."""
    names = list(NAMES) if names == ["all"] else names
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ValueError(f"unknown table(s) {unknown}; expected any of {list(NAMES)} or all")
    suite = Suite(out, preset, procs, progress)
    suite.run(jobs_for(names, seeds, preset))
    if "tab3" in names:
        from .probes import run_probes
        run_probes(suite, seeds)
    command = command or f"minicomp reproduce {' '.join(names)} --seeds {seeds} --preset {preset} --out {out}"
    return write_outputs(names, suite, seeds, command)
