"""Where a result was trained: the code and machine of every start of its run.

A run can be trained in pieces: stages seeded from a cache that another run trained, a suite
stopped and resumed a day later, on a newer commit or another CPU. Either can move a toy number by
about a seed's spread, so each piece is recorded when it starts, not when the result is written:

    runs/<slug>/provenance.jsonl    one line per (re)start: {"global_step", "code", "machine"}
    cache/<key>/provenance.jsonl    the starts that trained the cached stages, carried into the
                                    runs that start from them

A result then names them in order, "A → B" (a repeat of the previous start's value is dropped).
A run that started before this was recorded names "not recorded" for those steps."""
from __future__ import annotations

import json
from pathlib import Path

FILE = "provenance.jsonl"
UNRECORDED = "not recorded"


def starts(folder: Path) -> list[dict]:
    """The recorded starts in `folder`, in order (a torn last line, from a kill mid-write, is skipped)."""
    path = folder / FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def record_start(run: Path, global_step: int) -> None:
    """Append this start (the code and machine that train from `global_step` on). A run already past
    step 0 with nothing recorded was trained that far by code no one wrote down: say so."""
    from ..environment import code, machine  # torch: only a process that trains pays for it

    new = [] if starts(run) or global_step == 0 else [{"global_step": 0, "code": UNRECORDED, "machine": UNRECORDED}]
    new.append({"global_step": global_step, "code": code(), "machine": machine()})
    run.mkdir(parents=True, exist_ok=True)
    with (run / FILE).open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in new))


def write_until(records: list[dict], folder: Path, global_step: int) -> None:
    """The starts that trained steps before `global_step` (a cached stage's end), into `folder`."""
    (folder / FILE).write_text("".join(json.dumps(r) + "\n" for r in records if r["global_step"] < global_step))


def chain(records: list[dict], field: str) -> str:
    """"A → B": each start's `field` ("code" or "machine") in order, a repeat of the previous dropped."""
    values: list[str] = []
    for r in records:
        v = r.get(field, UNRECORDED)
        if not values or values[-1] != v:
            values.append(v)
    return " → ".join(values) or UNRECORDED
