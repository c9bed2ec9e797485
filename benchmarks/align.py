"""Alignment loss at the paper's scale: minicomp vs a naive dense implementation.

    python benchmarks/align.py            # B in {32, 256}, K = 151,936 (Qwen2.5), D = 896

Forward + backward of L_align (Eq. 8–10, Sinkhorn Eq. 9) for each mode. Times are medians of
alternating runs in this process; peak memory is the rise in resident memory (CPU) or the peak
allocation (CUDA) of one step, each measured in a fresh subprocess so that one cannot hide
another's peak. (They are spawned before this process allocates anything large: on Linux a
child inherits its parent's high-water mark of resident memory.)
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import minicomp as mc

K, D = 151_936, 896


def naive_loss(vis, txt, W, prior, eps=0.005, temp=0.005, n_iters=3, mode="balanced"):
    """The textbook version: dense (B, K) tensors in the probability domain, SwAV-style."""
    Wn = F.normalize(W, dim=-1).detach()
    f_v, f_t = F.normalize(vis, dim=-1), F.normalize(txt, dim=-1).detach()
    c_v, c_t = f_v @ Wn.T, f_t @ Wn.T
    u = prior / prior.sum()
    with torch.no_grad():
        Q = torch.exp(c_t / eps)  # (B, K); overflows in float32 once a cosine exceeds ~0.44
        for _ in range(n_iters):
            if mode == "balanced":
                Q = Q / Q.sum(0, keepdim=True) * u
                Q = Q / Q.sum(1, keepdim=True)
            else:
                Q = Q * u
                Q = Q / Q.sum(1, keepdim=True)
    return -(Q * F.log_softmax(c_v / temp, dim=-1)).sum(-1).mean()


def ours(vis, txt, W, prior, mode):
    return mc.alignment_loss(vis, txt, W, prior, mode=mode)


def naive(vis, txt, W, prior, mode):
    return naive_loss(vis, txt, W, prior, mode=mode)


IMPLS = {"minicomp": ours, "naive": naive}


def inputs(B, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(K, D, generator=g).to(device)
    vis = torch.randn(B, D, generator=g).to(device).requires_grad_(True)
    txt = torch.randn(B, D, generator=g).to(device)
    prior = torch.rand(K, generator=g).to(device)
    return vis, txt, W, prior


def step(fn, args, mode, device) -> float:
    vis = args[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn(*args, mode).backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    vis.grad = None
    return time.perf_counter() - t0


def peak_memory_mb(impl, B, mode, device) -> float:
    """One step in this process; returns the peak rise in MB (run in a fresh subprocess)."""
    args = inputs(B, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(IMPLS[impl], args, mode, device)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, the peak so far
    step(IMPLS[impl], args, mode, device)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--memory-of", nargs=3, metavar=("IMPL", "B", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.memory_of:
        impl, B, mode = args.memory_of
        print(json.dumps(peak_memory_mb(impl, int(B), mode, device)))
        return

    print(f"alignment loss, forward + backward: K = {K:,}, D = {D}, {device.type}, "
          f"{torch.get_num_threads()} threads; one fp32 (B, K) buffer = B × {K * 4 / 2**20:.2f} MB")
    mem = {(name, B, mode): float(subprocess.run(
        [sys.executable, __file__, "--device", args.device, "--memory-of", name, str(B), mode],
        capture_output=True, text=True, check=True).stdout)
        for B in args.batch for mode in mc.align.MODES for name in IMPLS}
    print(f"{'B':>4} {'mode':>9} | {'minicomp ms':>11} {'naive ms':>9} {'speed':>6} | "
          f"{'minicomp MB':>11} {'naive MB':>9} {'memory':>7} | finite")
    for B in args.batch:
        data = inputs(B, device)
        for mode in mc.align.MODES:
            for fn in IMPLS.values():
                step(fn, data, mode, device)  # warm-up
            t = {name: [] for name in IMPLS}
            for _ in range(args.reps):
                for name, fn in IMPLS.items():
                    t[name].append(step(fn, data, mode, device))
            t = {name: statistics.median(v) for name, v in t.items()}
            m = {name: mem[name, B, mode] for name in IMPLS}
            finite = all(torch.isfinite(fn(*data, mode)).item() for fn in IMPLS.values())
            print(f"{B:>4} {mode:>9} | {t['minicomp'] * 1e3:>11.0f} {t['naive'] * 1e3:>9.0f} "
                  f"{t['naive'] / t['minicomp']:>5.2f}x | {m['minicomp']:>11.0f} {m['naive']:>9.0f} "
                  f"{m['naive'] / max(m['minicomp'], 1e-9):>6.2f}x | {finite}")
    # Random features have cosines near 0; at a cosine of 0.45 the naive version breaks:
    s = torch.full((1, 3), 0.45)
    print(f"\nat a cosine of 0.45, ε = 0.005: naive exp(C/ε) = {torch.exp(s / 0.005)[0, 0].item()} "
          f"(float32), minicomp targets finite: {torch.isfinite(mc.sinkhorn_knopp(s)).all().item()}")


if __name__ == "__main__":
    main()
