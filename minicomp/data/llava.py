"""LLaVA-format data: LLaVA-Pretrain captions and LLaVA-NeXT / OneVision conversation files
(JSON list or JSONL) with an image root, and Hugging Face `datasets` files with embedded images
(.parquet, or a `save_to_disk` folder), as LLaVA-OneVision is distributed, and the folders of
`minicomp data index` (`minicomp.data.index`: validated once, memory-mapped). Text-only records
are kept.

Bad records are skipped and counted by reason in `.skipped` (a log line reports them), so that
``len(ds) + sum(ds.skipped.values())`` equals the number of records read; ``strict=True``
raises at the first one, naming it. Images are checked at construction from their headers
(missing, unreadable, too small, decompression bombs, extreme aspect ratios) and decoded on
access, where a file truncated after its header still fails (`BadImage`): the training loader
(`minicomp.stage_data.StepBatches`) counts such a record and takes a deterministic replacement.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path

from .images import BadImage, check_header, load_image
from .synthetic import Sample
from .tokenize import IMAGE_TOKEN

log = logging.getLogger(__name__)
EMBEDDED = "<embedded>"  # the image lives in the dataset row, not in a file


class BadRecord(ValueError):
    """A record we refuse; `reason` is the short key of `LlavaDataset.skipped`. `where` names the
    record ("<file> record 3 (id 'x')") and leads the message when given."""

    def __init__(self, reason: str, detail: str, where: str | None = None):
        super().__init__(f"{where}: {reason}: {detail}" if where else f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def read_records(path: str | os.PathLike):
    """Records of a .json (a list), .jsonl (one object per line), .parquet file or a `datasets`
    folder; for the last two, an indexable Hugging Face dataset with undecoded images."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.suffix == ".parquet" or path.is_dir():
        try:
            import datasets
        except ImportError:
            raise ImportError(f"{path}: reading Hugging Face dataset files needs `pip install datasets`") from None
        ds = datasets.Dataset.from_parquet(str(path)) if path.suffix == ".parquet" else datasets.load_from_disk(str(path))
        if "image" in ds.column_names and isinstance(ds.features["image"], datasets.Image):
            ds = ds.cast_column("image", datasets.Image(decode=False))  # bytes, decoded on access
        return ds
    if path.suffix == ".jsonl":  # one bad line (invalid UTF-8 or JSON, nested too deep) is one bad record
        out = []
        for n, raw in enumerate(path.read_bytes().split(b"\n"), 1):
            if raw.strip():
                try:
                    out.append(json.loads(raw.decode("utf-8")))
                except UnicodeDecodeError as e:
                    out.append(BadRecord("invalid UTF-8", f"{path}:{n}: {e}"))
                except (json.JSONDecodeError, RecursionError) as e:
                    out.append(BadRecord("invalid JSON", f"{path}:{n}: {type(e).__name__}: {e}"))
        return out
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise ValueError(f"{path}: not a valid JSON file ({type(e).__name__}: {e}); expected a JSON list "
                             f"of records") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        return data
    raise ValueError(f"{path}: expected a .json or .jsonl file")


def check_record(rec, image_root: Path | None) -> tuple[str | None, list[dict]]:
    """Validate one record; return (image path or None, conversations) or raise BadRecord."""
    if isinstance(rec, BadRecord):
        raise rec
    if not isinstance(rec, dict):
        raise BadRecord("not an object", f"got {type(rec).__name__}")
    conv = rec.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise BadRecord("missing field", "`conversations` must be a non-empty list")
    for t in conv:
        if not isinstance(t, dict) or t.get("from") not in ("human", "gpt", "system") or not isinstance(t.get("value"), str):
            raise BadRecord("bad conversations", f"turn {t!r} needs `from` in human/gpt/system and a string `value`")
        if not t["value"].replace(IMAGE_TOKEN, "").strip() and t["from"] != "system":
            raise BadRecord("empty text", f"a {t['from']} turn has no text")
    if not any(t["from"] == "gpt" for t in conv):
        raise BadRecord("no assistant turn", "no `gpt` turn to supervise")
    first = next(t["from"] for t in conv if t["from"] != "system")
    if first != "human":
        raise BadRecord("assistant turn first", "the first turn after any system turn must be `human`")
    images = rec.get("image")
    images = [] if images is None else [images] if isinstance(images, (str, dict)) else images
    if not isinstance(images, list) or not all(isinstance(i, (str, dict)) for i in images):
        raise BadRecord("missing field", "`image` must be a path, a list of paths or an embedded image")
    if len(images) > 1:
        raise BadRecord("multiple images", f"{len(images)} images; minicomp trains on single-image records")
    n_tokens = sum(t["value"].count(IMAGE_TOKEN) for t in conv)
    if n_tokens != len(images):
        more = "more" if n_tokens > len(images) else "fewer"
        raise BadRecord("placeholder mismatch", f"{n_tokens} {IMAGE_TOKEN} placeholders ({more}) for {len(images)} images")
    if not images:
        return None, conv
    if isinstance(images[0], dict):  # embedded (datasets): {"bytes": ..., "path": ...}
        data = images[0].get("bytes")
        if not isinstance(data, bytes):  # JSON holds no bytes: {"bytes": "<a path>"} would dodge the root check
            raise BadRecord("bad embedded image", f"`bytes` must be encoded image bytes (a datasets file), "
                                                  f"got {type(data).__name__}")
        if not data:
            raise BadRecord("missing field", "embedded image has no bytes")
        try:
            check_header(data, images[0].get("path") or "<embedded image>")
        except BadImage as e:
            raise BadRecord(e.reason, e.detail) from None
        return EMBEDDED, conv
    if "\x00" in images[0]:
        raise BadRecord("bad image path", f"{images[0]!r} holds a NUL byte")
    root = (image_root or Path(".")).resolve()
    path = (root / images[0]).resolve()
    if root not in path.parents:
        raise BadRecord("image path escapes root", f"{images[0]!r} is outside {root}")
    try:
        check_header(str(path))
    except BadImage as e:
        raise BadRecord(e.reason, e.detail) from None
    return str(path), conv


class LlavaDataset:
    """Indexable LLaVA-format dataset: items are `Sample`s (image None for text-only records)."""

    def __init__(self, path: str | os.PathLike, image_root: str | os.PathLike | None = None, strict: bool = False):
        self.path, self.image_root = Path(path), Path(image_root) if image_root is not None else None
        self.skipped: Counter = Counter()
        self.items: list[tuple[str | None, list[dict], dict]] = []
        self._rows = None
        from .index import IndexedRecords, is_index
        if is_index(self.path):  # `minicomp data index`: validated once, memory-mapped, opened in O(1)
            self.items = IndexedRecords(self.path)
            self.skipped.update(self.items.meta["skipped"])
            return
        records = read_records(self.path)
        self._rows = None if isinstance(records, list) else records  # a datasets.Dataset: images read on access
        for i, rec in enumerate(records):
            try:
                image, conv = check_record(rec, self.image_root)
            except BadRecord as e:
                rid = rec.get("id", i) if isinstance(rec, dict) else i
                if strict:
                    raise BadRecord(e.reason, e.detail, where=f"{self.path} record {i} (id {rid!r})") from None
                self.skipped[e.reason] += 1
                continue
            self.items.append((image, conv, {"id": rec.get("id", str(i)), "index": i, "source": str(self.path)}))
        if self.skipped:
            log.warning("%s: kept %d records, skipped %d: %s", self.path, len(self.items),
                        sum(self.skipped.values()), dict(self.skipped))

    def __len__(self) -> int:
        return len(self.items)

    def where(self, i: int) -> str:
        """Item i's record, named as errors name it: "<file> record 3 (id 'x')"."""
        meta = self.items[i][2]
        return f"{meta['source']} record {meta['index']} (id {meta['id']!r})"  # the file, also for an index

    def conversations(self, i: int) -> list[dict]:
        """Item i's turns, without decoding its image (for counting text, e.g. the word prior)."""
        return self.items[i][1]

    def __getitem__(self, i: int) -> Sample:
        image, conv, meta = self.items[i]
        caption = "\n".join(t["value"] for t in conv if t["from"] == "gpt")  # the text to align with
        if image == EMBEDDED:
            img = self._rows[meta["index"]]["image"]
            pil = load_image(img["bytes"], img.get("path") or f"{self.path} row {meta['index']}")
        else:
            pil = load_image(image) if image else None
        return Sample(pil, caption, conv, dict(meta, image_path=image))
