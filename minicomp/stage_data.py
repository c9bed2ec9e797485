"""The data of each stage, as the training loop uses it: data paths resolved (and checked) before
any model loads, datasets built from the config, a deterministic sample order, the step batches
that make a run resumable mid-stage, and the token counts for the word prior."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from .config import TrainConfig
from .data.collate import collate
from .data.images import BadImage
from .data.llava import BadRecord, LlavaDataset
from .data.prior import count_tokens
from .data.synthetic import SyntheticDataset
from .data.tokenize import TooLong


def resolve_data(cfg: TrainConfig, data_root: str | Path | None) -> dict[str, dict]:
    """Absolute paths for every file dataset; missing files are an error before anything loads."""
    out = {}
    for key, spec in cfg.data.items():
        spec = dict(spec)
        if "path" in spec:
            for k in ("path", "image_root"):
                if spec.get(k) and not Path(spec[k]).is_absolute():
                    if data_root is None:
                        raise ValueError(f"data.{key}.{k} = {spec[k]!r} is relative: pass --data DIR (the folder it is in)")
                    spec[k] = str(Path(data_root) / spec[k])
            if not Path(spec["path"]).exists():  # a file, or a `datasets` save_to_disk folder
                raise FileNotFoundError(f"data.{key}: {spec['path']} does not exist (stage data must be in place "
                                        f"before training starts)")
        out[key] = spec
    return out


def build_dataset(spec: dict, seed: int, strict: bool = False):
    """One entry of the config's `data` -> an indexable dataset of `Sample`s (toy or LLaVA format)."""
    if "synthetic" in spec:
        return SyntheticDataset(spec.get("split", "train"), int(spec["synthetic"]), seed=spec.get("seed", seed),
                                task=spec.get("task", "qa"))
    return LlavaDataset(spec["path"], image_root=spec.get("image_root"), strict=strict)


def check_data(cfg: TrainConfig, data: dict[str, dict]) -> dict[str, int]:
    """Build every stage's dataset once, before any model loads or any stage trains: one with no
    usable record is an error naming its key, its file and its skip counts (the stage would
    otherwise have no sample to draw). Returns the number of usable records per data key."""
    sizes = {}
    for key in dict.fromkeys(s.data for s in cfg.stages):
        ds = build_dataset(data[key], cfg.seed, cfg.strict_data)
        if len(ds) == 0:
            spec = data[key]
            where = spec["path"] if "path" in spec else f"synthetic: {spec['synthetic']}"
            skipped = dict(getattr(ds, "skipped", None) or {})
            why = (f"all {sum(skipped.values())} records were skipped: {skipped}" if skipped
                   else "it holds no records")
            stages = [st.name for st in cfg.stages if st.data == key]
            raise ValueError(f"data.{key} ({where}): no usable records, {why}; stage(s) {stages} need it")
        sizes[key] = len(ds)
    return sizes


def sample_order(n: int, total: int, seed: int) -> list[int]:
    """`total` sample indices: successive seeded permutations of range(n) (epochs)."""
    if n <= 0 and total > 0:
        raise ValueError(f"no samples to draw {total} from: the dataset is empty")
    g = torch.Generator().manual_seed(seed)
    out: list[int] = []
    while len(out) < total:
        out += torch.randperm(n, generator=g).tolist()
    return out[:total]


ACCESS_ERRORS = (BadRecord, BadImage, TooLong)  # what a record can still fail with when it is read
MAX_REPLACEMENTS = 64  # consecutive failing records before the data, not a record, is to blame


class StepBatches(Dataset):
    """Item k: this process's k-th micro-batch of the stage, a pure function of k. Global step s
    takes samples order[s·G : (s+1)·G], split over accumulation steps and processes.

    A record that passed construction can still fail when read: an image truncated after its
    header, a conversation whose image tokens do not fit `max_length`. It is replaced by the next
    record (i+1, i+2, … mod n) that works, so the batch stays full and stays a pure function of
    k (resume is exact); the batch's `skipped` names each one. strict=True raises instead."""

    def __init__(self, ds, proc, order, global_batch, micro, rank, world, pad_id, strict: bool = False):
        self.ds, self.proc, self.order, self.G, self.m = ds, proc, order, global_batch, micro
        self.rank, self.world, self.pad_id, self.strict = rank, world, pad_id, strict
        self.accum = global_batch // (micro * world)

    def __len__(self) -> int:
        return len(self.order) // self.G * self.accum

    def example(self, i: int, skipped: list) -> dict:
        """Sample i processed, or the first working replacement; failures are appended to `skipped`."""
        n = len(self.ds)
        for k in range(min(MAX_REPLACEMENTS, n)):
            j = (i + k) % n
            try:
                return self.proc(self.ds[j])
            except ACCESS_ERRORS as e:
                where = self.ds.where(j) if hasattr(self.ds, "where") else f"item {j}"
                reason = getattr(e, "reason", "conversation too long" if isinstance(e, TooLong) else type(e).__name__)
                if self.strict:
                    raise BadRecord(reason, str(e), where=where) from None
                skipped.append((reason, f"{where}: {e}"))
        raise RuntimeError(f"{min(MAX_REPLACEMENTS, n)} consecutive records from item {i} on failed when read "
                           f"(last: {skipped[-1][1]}); check the data, not one record")

    def __getitem__(self, k: int):
        step, a = divmod(k, self.accum)
        start = step * self.G + (a * self.world + self.rank) * self.m
        skipped: list = []
        batch = collate([self.example(i, skipped) for i in self.order[start:start + self.m]], self.pad_id)
        batch.skipped = skipped
        return batch


def word_prior_counts(cfg: TrainConfig, data: dict, model, say, progress: bool = True) -> torch.Tensor | None:
    """Token counts (K,) for the word prior: from `cfg.word_prior`'s file, or counted in the answers
    of the first Stage II data ("auto"); None for a uniform prior."""
    if cfg.word_prior is None:
        return None
    if cfg.word_prior != "auto":
        from .data.prior import load_counts
        return load_counts(cfg.word_prior)
    stage2 = [s for s in cfg.stages if s.name in ("II-fixed", "II-native")] or cfg.stages  # not "III"
    ds = build_dataset(data[stage2[0].data], cfg.seed)
    n = min(cfg.prior_samples, len(ds))
    say(f"word prior: counting the tokens of {n:,} captions of data '{stage2[0].data}'")
    texts = ("\n".join(t["value"] for t in ds.conversations(i) if t["from"] == "gpt") for i in range(n))  # images
    #                                                                         are not decoded to count text
    return count_tokens(texts, model.tokenizer, total=n, progress=progress)
