"""A one-time, validated, memory-mapped index of a LLaVA file, for paper-scale data.

`LlavaDataset` over a JSON/JSONL file reads every record into Python objects and opens every
image's header when it is built: at the Stage II file's 4M records that is minutes and gigabytes
per process, before the first step. `build_index` does that validation once, in parallel, and
writes what training needs as an Arrow IPC file (`records.arrow`: the record's number, id, image
path and conversations as JSON text) plus `index.json` (the source, the counts read, kept and
skipped by reason). `LlavaDataset(INDEX_DIR)` then opens it in constant time: the file is
memory-mapped, so its pages are shared by every process of a node through the page cache, and
a record's conversations are parsed only when the record is read.

The guarantees of `LlavaDataset` hold: bad records are counted by reason (or raised, `strict`),
`len + skipped == read`, and an image that goes bad after indexing fails when it is read
(`BadImage`), which the training loader counts and replaces.
"""
from __future__ import annotations

import json
import os
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from pathlib import Path

from .llava import BadRecord, check_record

RECORDS, META = "records.arrow", "index.json"
VERSION = 1


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.ipc  # noqa: F401
    except ImportError:
        raise ImportError("the data index needs pyarrow: pip install pyarrow (it comes with `datasets`)") from None
    return pa


def _raw_records(path: Path):
    """(record number, raw record) pairs: JSONL lines as bytes (parsed in the workers), or the
    objects of a JSON list."""
    if path.suffix == ".jsonl":
        with open(path, "rb") as f:
            n = 0
            for line in f:
                if line.strip():
                    yield n, line
                    n += 1
    elif path.suffix == ".json":
        from .llava import read_records
        yield from enumerate(read_records(path))
    else:
        raise ValueError(f"{path}: the index is built from a .json or .jsonl file (a .parquet file or a "
                         f"`datasets` folder is read memory-mapped already)")


def _check_chunk(args) -> list[tuple]:
    """Validate (number, raw) records: ("ok", number, id, image, conversations JSON) or
    ("bad", number, reason, detail, id)."""
    chunk, image_root, source = args
    out = []
    for n, raw in chunk:
        rec = raw
        if isinstance(raw, bytes):
            try:
                rec = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                rec = BadRecord("invalid UTF-8", f"{source}:{n + 1}: {e}")
            except (json.JSONDecodeError, RecursionError) as e:
                rec = BadRecord("invalid JSON", f"{source}:{n + 1}: {type(e).__name__}: {e}")
        rid = rec.get("id", str(n)) if isinstance(rec, dict) else str(n)
        try:
            image, conv = check_record(rec, image_root)
        except BadRecord as e:
            out.append(("bad", n, e.reason, e.detail, str(rid)))
            continue
        out.append(("ok", n, str(rid), image, json.dumps(conv, ensure_ascii=False)))
    return out


def _ordered_map(fn, jobs, workers: int):
    """fn over jobs in `workers` processes, results in order, at most 2 × workers jobs in flight (the
    input is read as it is consumed, never all at once)."""
    if workers <= 1:
        yield from map(fn, jobs)
        return
    with ProcessPoolExecutor(workers) as pool:
        pending: deque = deque()
        for job in jobs:
            pending.append(pool.submit(fn, job))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def build_index(src: str | os.PathLike, out: str | os.PathLike, image_root: str | os.PathLike | None = None,
                workers: int | None = None, strict: bool = False, chunk: int = 4096, progress: bool = True) -> dict:
    """Validate every record of `src` once (in `workers` processes) and write the index folder `out`.
    Returns the index's metadata (also written to out/index.json)."""
    pa = _pyarrow()
    src, out = Path(src), Path(out)
    if not src.is_file():
        raise FileNotFoundError(f"data file {src} does not exist")
    root = Path(image_root).resolve() if image_root is not None else None
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    schema = pa.schema([("index", pa.int64()), ("id", pa.string()), ("image", pa.string()),
                        ("conversations", pa.string())])
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (RECORDS + ".tmp")
    skipped: Counter = Counter()
    records = _raw_records(src)
    chunks = iter(lambda: list(islice(records, chunk)), [])
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(desc=f"indexing {src.name}", unit=" records")
    counts = {"read": 0, "kept": 0}
    try:
        _write(pa, tmp, schema, _ordered_map(_check_chunk, ((c, root, str(src)) for c in chunks), workers),
               src, strict, skipped, bar, counts)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half-written index is left behind (a strict stop, an interrupt)
        raise
    finally:
        if bar is not None:
            bar.close()
    os.replace(tmp, out / RECORDS)
    meta = {"version": VERSION, "source": str(src.resolve()), "image_root": str(root) if root else None,
            **counts, "skipped": dict(skipped)}
    (out / META).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _write(pa, tmp: Path, schema, results, src: Path, strict: bool, skipped: Counter, bar, counts: dict) -> None:
    """The validated chunks into the Arrow file `tmp`, in order; skips counted by reason."""
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for rows in results:
            good = [r[1:] for r in rows if r[0] == "ok"]
            for _, n, reason, detail, rid in (r for r in rows if r[0] == "bad"):
                if strict:
                    raise BadRecord(reason, detail, where=f"{src} record {n} (id {rid!r})")
                skipped[reason] += 1
            counts["read"] += len(rows)
            counts["kept"] += len(good)
            if good:
                cols = list(zip(*good))  # index, id, image, conversations
                writer.write_batch(pa.record_batch([pa.array(c, t.type) for c, t in zip(cols, schema)], schema=schema))
            if bar is not None:
                bar.update(len(rows))


def is_index(path: str | os.PathLike) -> bool:
    return (Path(path) / META).is_file() and (Path(path) / RECORDS).is_file()


class IndexedRecords:
    """The rows of an index, memory-mapped: `[i]` -> (image path or None, conversations, meta), the
    same triple as `LlavaDataset.items` holds for a file it validated itself."""

    def __init__(self, path: str | os.PathLike):
        pa = _pyarrow()
        self.path = Path(path)
        self.meta = json.loads((self.path / META).read_text())
        if self.meta.get("version") != VERSION:
            raise ValueError(f"{self.path}: index version {self.meta.get('version')!r}, expected {VERSION}; "
                             f"rebuild it with `minicomp data index`")
        self._table = pa.ipc.open_file(pa.memory_map(str(self.path / RECORDS), "r")).read_all()  # zero-copy
        if self._table.num_rows != self.meta["kept"]:
            raise ValueError(f"{self.path}: {self._table.num_rows} rows but index.json says {self.meta['kept']}")
        self._cols = [self._table.column(c) for c in ("index", "id", "image", "conversations")]

    def __len__(self) -> int:
        return self._table.num_rows

    def __getitem__(self, i: int) -> tuple[str | None, list[dict], dict]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        n, rid, image, conv = (c[i].as_py() for c in self._cols)
        return image, json.loads(conv), {"id": rid, "index": n, "source": self.meta["source"]}
