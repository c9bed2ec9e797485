"""Data pipeline throughput: the synthetic generator alone, and the full pipeline (generate,
resize to the token budget, tokenise through the chat template, collate) with 0 and 2
DataLoader workers; then the samples/s that the tiny model's training step consumes (forward,
backward and AdamW step of `CoMPModel.from_preset("tiny")` on the same batches). Target: the
pipeline is at least 3× faster than the step, so it is never the bottleneck.

    python benchmarks/data.py
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

import minicomp as mc
import minicomp.data as d


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
    ap.add_argument("--max-tokens", type=int, default=256, help="native budget, merged tokens per image")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps of the tiny model")
    args = ap.parse_args()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    n = args.samples
    ds = d.SyntheticDataset("train", n, seed=1)
    gen = rate(n, lambda: [ds[i] for i in range(n)])
    print(f"synthetic generator, one process: {gen:,.0f} samples/s")
    model = mc.CoMPModel.from_preset("tiny")
    tok, proc = model.tokenizer, model.processor(max_tokens=args.max_tokens, max_length=2048)
    pipe = {}
    for workers in (0, 2):
        loader = DataLoader(Examples(ds, proc), batch_size=args.batch, num_workers=workers,
                            collate_fn=lambda ex: d.collate(ex, tok.pad_token_id))
        pipe[workers] = rate(n, lambda: [b for b in loader])
        print(f"full pipeline (generate, resize, tokenise, collate), {workers} workers: {pipe[workers]:,.0f} samples/s")

    torch.set_num_threads(threads)  # the step gets every core, as in training
    batches = [d.collate([proc(ds[i]) for i in range(j, j + args.batch)], tok.pad_token_id)
               for j in range(0, args.batch * (args.steps + 2), args.batch)]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(b):
        loss = model(b).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for b in batches[:2]:  # warm-up
        step(b)
    train = rate(args.batch * args.steps, lambda: [step(b) for b in batches[2:]])
    vis = sum(b.input_ids.eq(model.config.image_token_id).sum().item() for b in batches) / len(batches) / args.batch
    print(f"tiny model training step ({threads} threads, batch {args.batch}, {vis:.0f} visual tokens per image): "
          f"{train:,.1f} samples/s")
    for workers, r in pipe.items():
        print(f"pipeline / step, {workers} workers: {r / train:.1f}x (target >= 3x)")


if __name__ == "__main__":
    main()
