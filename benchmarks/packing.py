"""Packed vs padded-to-max, and the cost of RoPE, for forward + backward through a CRoPEViT.

    python benchmarks/packing.py                      # CPU: SigLIP-B/16 at depth 2
    python benchmarks/packing.py --depth 12 --device cuda

A mixed batch (aspect ratios 1:3 … 3:1, about 64 … 1024 patches per image) goes through the same
ViT twice, alternating, and the script prints medians and ratios measured in this one run.
Targets (issue 2): packed ≥ 1.5× padded tokens/s; RoPE on ≤ 1.15× the time of RoPE off.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import timm
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

import minicomp as mc


def mixed_grids(n: int) -> list[tuple[int, int]]:
    """n patch grids whose token counts step geometrically from 64 to 1024, with aspect ratios
    (w/h) cycling through 1:3, 1:2, 1:1, 2:1, 3:1."""
    aspects = [1 / 3, 1 / 2, 1.0, 2.0, 3.0]
    grids = []
    for i in range(n):
        count = 64 * 16 ** (i / max(n - 1, 1))
        a = aspects[i % len(aspects)]
        h = max(1, round(math.sqrt(count / a)))
        grids.append((h, max(1, round(h * a))))
    return grids


def padded_forward(enc: mc.CRoPEViT, images: list[torch.Tensor]) -> torch.Tensor:
    """The baseline: pad every image's sequence to the longest, mask padded keys. -> (ΣN_i, D)."""
    grids = enc.check_images(images)
    n_prefix = enc.num_prefix if enc.feeds_prefix else 0
    seqs = enc.embed(images, grids)
    lens = torch.tensor([s.shape[0] for s in seqs])
    x = enc.norm_pre(pad_sequence(seqs, batch_first=True))  # (B, Nmax, D)
    B, N = x.shape[:2]
    valid = torch.arange(N)[None, :] < lens[:, None]  # (B, Nmax)
    mask = valid.to(x.device)[:, None, None, :]  # (B, 1, 1, Nmax): keys that exist
    cos = sin = None
    if enc.rope:
        tables = [enc._rope_tables([g], n_prefix, x.device) for g in grids]  # each (n_prefix + N_i, 1, Dh)
        cos = pad_sequence([c for c, _ in tables], batch_first=True, padding_value=1.0)  # (B, Nmax, 1, Dh)
        sin = pad_sequence([s for _, s in tables], batch_first=True)

    def attend(q, k, v):  # (B, Nmax, heads, Dh)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        return o.transpose(1, 2)  # (B, Nmax, heads, Dh)

    for blk in enc.blocks:
        x = enc._block(blk, x, cos, sin, attend, lens.tolist())
    x = enc.norm(x)
    keep = valid.clone()
    keep[:, :n_prefix] = False  # drop prefix outputs, as the packed encoder does
    return x[keep.to(x.device)]  # (ΣN_i, D)


def step(fn, enc, images, device) -> float:
    """Seconds for one forward + backward."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = fn(enc, images)
    out.float().square().mean().backward()
    enc.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def compare(name_a, fn_a, name_b, fn_b, enc, images, device, reps) -> tuple[float, float]:
    """Alternate a and b `reps` times after a warm-up; return median seconds of each."""
    for fn in (fn_a, fn_b):
        step(fn, enc, images, device)
    ta, tb = [], []
    for _ in range(reps):
        ta.append(step(fn_a, enc, images, device))
        tb.append(step(fn_b, enc, images, device))
    return statistics.median(ta), statistics.median(tb)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_base_patch16_siglip_224")
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    vit = timm.create_model(args.model, pretrained=False, depth=args.depth).to(device).train()
    enc = mc.CRoPEViT.from_timm(vit, rope=True)
    p = enc.patch_size
    grids = mixed_grids(args.images)
    images = [torch.randn(3, h * p, w * p, device=device) for h, w in grids]
    n_tok = sum(h * w for h, w in grids)
    n_pad = len(grids) * max(h * w for h, w in grids)
    print(f"{args.model}, depth {args.depth}, {device.type}, {torch.get_num_threads()} threads; "
          f"{len(grids)} images, {n_tok} tokens (padded: {n_pad}), grids {grids}")

    with torch.no_grad():  # the baseline computes the same function
        err = (padded_forward(enc, images) - enc(images).tokens).abs().max().item()
    print(f"padded == packed: max |diff| = {err:.1e}")

    def packed(e, imgs):
        return e(imgs).tokens

    t_pack, t_pad = compare("packed", packed, "padded", padded_forward, enc, images, device, args.reps)
    print(f"forward+backward  packed: {t_pack * 1e3:8.1f} ms  {n_tok / t_pack:10,.0f} tokens/s")
    print(f"                  padded: {t_pad * 1e3:8.1f} ms  {n_tok / t_pad:10,.0f} tokens/s")
    print(f"packed / padded throughput: {t_pad / t_pack:.2f}x   (target >= 1.5x)")

    def rope_off(e, imgs):
        e.rope = False
        try:
            return e(imgs).tokens
        finally:
            e.rope = True

    t_on, t_off = compare("rope", packed, "no rope", rope_off, enc, images, device, args.reps)
    print(f"RoPE on / off time (packed): {t_on * 1e3:.1f} / {t_off * 1e3:.1f} ms = {t_on / t_off:.3f}x   "
          f"(target <= 1.15x)")
    attention_backends(grids, enc.num_heads, enc.head_dim, device, args.reps)


def attention_backends(grids, heads, head_dim, device, reps) -> None:
    """Forward time of each packed-attention backend on the batch's sequence lengths, vs reference."""
    from minicomp.attention import packed_attention
    from minicomp.packed import cu_seqlens_from_lengths
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lengths = torch.tensor([h * w for h, w in grids])
    cu = cu_seqlens_from_lengths(lengths).to(device)
    q, k, v = torch.randn(3, int(lengths.sum()), heads, head_dim, device=device, dtype=dtype).unbind(0)
    backends = ["reference", "sdpa", "flex"] + (["varlen"] if device.type == "cuda" else [])
    times = {}
    for b in backends:
        try:
            packed_attention(q, k, v, cu, backend=b)  # warm-up (compiles flex on CUDA)
        except Exception as e:  # e.g. a kernel this GPU or build lacks: report, don't hide
            print(f"attention backend {b}: unavailable ({type(e).__name__}: {e})")
            continue
        ts = []
        for _ in range(reps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.no_grad():
                packed_attention(q, k, v, cu, backend=b)
            if device.type == "cuda":
                torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
        times[b] = statistics.median(ts)
    ref = times["reference"]
    print("attention forward, one layer: " + "  ".join(
        f"{b} {t * 1e3:.1f} ms ({ref / t:.2f}x)" for b, t in times.items()) + "   (speed-up vs reference)")


if __name__ == "__main__":
    main()
