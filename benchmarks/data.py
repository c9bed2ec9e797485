"""Data pipeline throughput: the synthetic generator alone, and the full pipeline (generate,
resize to the token budget, tokenise through the chat template, collate) with 0 and 2
DataLoader workers.

    python benchmarks/data.py

The comparison with the tiny model's training step (target: pipeline ≥ 3× faster) needs the
training loop and is added with it.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

import minicomp.data as d
from minicomp.toy import build_tokenizer


class Examples(torch.utils.data.Dataset):
    def __init__(self, ds, proc):
        self.ds, self.proc = ds, proc

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.proc(self.ds[i])


def rate(n: int, fn) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=600)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    n = args.samples
    ds = d.SyntheticDataset("train", n, seed=1)
    gen = rate(n, lambda: [ds[i] for i in range(n)])
    print(f"synthetic generator, one process: {gen:,.0f} samples/s")
    texts = [t for i in range(300) for t in [ds[i].caption] + [c["value"] for c in ds[i].conversations]]
    tok = build_tokenizer(texts, vocab_size=1024)
    proc = d.Processor(tok, patch=8, merge=2, max_tokens=256, max_length=2048)
    for workers in (0, 2):
        loader = DataLoader(Examples(ds, proc), batch_size=args.batch, num_workers=workers,
                            collate_fn=lambda ex: d.collate(ex, tok.pad_token_id))
        full = rate(n, lambda: [b for b in loader])
        print(f"full pipeline (generate, resize, tokenise, collate), {workers} workers: {full:,.0f} samples/s")


if __name__ == "__main__":
    main()
