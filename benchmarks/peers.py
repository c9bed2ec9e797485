"""minicomp's packed C-RoPE encoder against the native-resolution ViTs of its peers, at equal size.

    python benchmarks/peers.py                 # CPU fp32, a quiet machine
    python benchmarks/peers.py --load 2        # the same with two CPU-heavy processes beside it
    python benchmarks/peers.py --device cuda   # CUDA bf16 autocast

One mixed native-resolution batch (8 images, 84 … 1024 patches, aspect ratios 1:3 … 3:1, even
grids) goes forward and backward through four encoders of one size (width 768, 12 heads, MLP
3072, depth 2 by default, patch 16, a learned 16×16 position grid, random weights):

- minicomp `CRoPEViT` (timm ViT, resampled APE + 2D RoPE, images packed, block-diagonal attention);
- transformers' Qwen3-VL vision tower (interpolated PE + 2D RoPE, packed with `grid_thw`, its own
  per-image attention), without its patch merger and deepstack mergers. Its patch embedding is a
  Conv3d over 2 frames, so an image is fed twice (its input has 2 × 3 × 16 × 16 values per patch);
- timm `NaFlexVit` (learned PE + axial RoPE), images padded to the longest with a key mask;
- transformers `Siglip2VisionModel` (NaFlex: resized learned PE), padded with a mask.

The systems take turns, one step each, for --reps rounds (15), in the order above and reversed by
turns (Qwen3-VL, the peer to beat, next to minicomp either way). Medians of each give tokens/s (real
tokens, not padded slots) and the ratio to minicomp, all from this one run. Each round also gives
minicomp's lead over each peer, the peer's step time over minicomp's in that round: their median
with a distribution-free 95% interval (`minicomp.stats.median_interval`; exact if the rounds are
independent, which under load they need not be). Steps in one round run seconds apart, so a swing of
the load that slows both leaves their lead as it was; the ratio of the medians pairs nothing.
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import statistics
import time

import timm
import torch
import torch.nn as nn

import minicomp as mc
from minicomp.stats import median_interval

WIDTH, HEADS, MLP, PATCH, GRID = 768, 12, 3072, 16, 16


def mixed_grids(n: int = 8) -> list[tuple[int, int]]:
    """n even patch grids from about 84 to 1024 patches, aspect ratios (w/h) cycling 1:3 … 3:1."""
    aspects = [1 / 3, 1 / 2, 1.0, 2.0, 3.0]
    grids = []
    for i in range(n):
        count = 84 * (1024 / 84) ** (i / max(n - 1, 1))
        a = aspects[i % len(aspects)]
        h = max(2, 2 * round(math.sqrt(count / a) / 2))
        w = max(2, 2 * round(h * a / 2))
        while h * w > 1024:
            h, w = (h - 2, w) if h >= w else (h, w - 2)
        grids.append((h, w))
    return grids


# ---- the systems: each builds itself and returns step(images) -> real output tokens -------------

def build_minicomp(depth, device):
    vit = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, depth=depth, img_size=GRID * PATCH)
    enc = mc.CRoPEViT.from_timm(vit, rope=True).to(device).train()
    return enc, lambda images, grids: enc(images).tokens  # (ΣN, D)


def _patchify(images, grids, channels_last: bool) -> list[torch.Tensor]:
    out = []
    for img, (h, w) in zip(images, grids):
        x = img.view(3, h, PATCH, w, PATCH)  # (C, h, p, w, p)
        x = x.permute(1, 3, 2, 4, 0) if channels_last else x.permute(1, 3, 0, 2, 4)  # (h, w, p, p, C) / (h, w, C, p, p)
        out.append(x.reshape(h * w, -1))  # (N, 3·p·p)
    return out


def _pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(r.shape[0] for r in rows)
    x = rows[0].new_zeros(len(rows), n, rows[0].shape[1])  # (B, Nmax, F)
    valid = torch.zeros(len(rows), n, dtype=torch.bool, device=x.device)
    for i, r in enumerate(rows):
        x[i, :r.shape[0]], valid[i, :r.shape[0]] = r, True
    return x, valid


def build_naflexvit(depth, device):
    from timm.models.naflexvit import NaFlexVit, NaFlexVitCfg
    cfg = NaFlexVitCfg(patch_size=PATCH, embed_dim=WIDTH, depth=depth, num_heads=HEADS, mlp_ratio=MLP / WIDTH,
                       pos_embed="learned", pos_embed_grid_size=(GRID, GRID), rope_type="axial", global_pool="")
    model = NaFlexVit(cfg, num_classes=0).to(device).train()

    def step(images, grids):
        x, valid = _pad(_patchify(images, grids, channels_last=True))
        coord = torch.zeros(*valid.shape, 2, dtype=torch.long, device=x.device)  # (B, Nmax, 2): (row, col)
        for i, (h, w) in enumerate(grids):
            yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            coord[i, :h * w] = torch.stack([yy, xx], -1).view(-1, 2).to(x.device)
        out = model.forward_features(x, patch_coord=coord, patch_valid=valid)
        out = out["patches"] if isinstance(out, dict) else out  # (B, Nmax, D)
        return out[valid]
    return model, step


def build_siglip2(depth, device):
    from transformers import Siglip2VisionConfig, Siglip2VisionModel
    cfg = Siglip2VisionConfig(hidden_size=WIDTH, intermediate_size=MLP, num_hidden_layers=depth,
                              num_attention_heads=HEADS, patch_size=PATCH, num_patches=GRID * GRID,
                              vision_use_head=False, attn_implementation="sdpa")
    model = Siglip2VisionModel(cfg).to(device).train()

    def step(images, grids):
        x, valid = _pad(_patchify(images, grids, channels_last=True))
        shapes = torch.tensor(grids, device=x.device)  # (B, 2)
        out = model(pixel_values=x, pixel_attention_mask=valid.long(), spatial_shapes=shapes).last_hidden_state
        return out[valid]
    return model, step


def build_qwen3vl(depth, device):
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel
    cfg = Qwen3VLVisionConfig(depth=depth, hidden_size=WIDTH, intermediate_size=MLP, num_heads=HEADS,
                              patch_size=PATCH, temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=WIDTH,
                              num_position_embeddings=GRID * GRID, deepstack_visual_indexes=[])
    cfg._attn_implementation = "sdpa"
    model = Qwen3VLVisionModel(cfg).to(device).train()
    model.merger = nn.Identity()  # the tower alone, as the other systems

    def step(images, grids):
        rows = []
        for img, (h, w) in zip(images, grids):
            # (C, h/2, 2, p, w/2, 2, p): patches in 2×2 merge windows, Qwen's order; 2 frames of the same image
            x = img.view(3, h // 2, 2, PATCH, w // 2, 2, PATCH).permute(1, 4, 2, 5, 0, 3, 6)  # (h/2, w/2, 2, 2, C, p, p)
            x = x.reshape(h * w, 3, 1, PATCH, PATCH).expand(-1, -1, 2, -1, -1)  # (N, C, T=2, p, p)
            rows.append(x.reshape(h * w, -1))
        thw = torch.tensor([[1, h, w] for h, w in grids], device=images[0].device)
        return model(torch.cat(rows), grid_thw=thw).last_hidden_state  # (ΣN, D)
    return model, step


SYSTEMS = {"minicomp CRoPEViT (packed)": build_minicomp, "transformers Qwen3-VL vision (packed)": build_qwen3vl,
           "timm NaFlexVit (padded + mask)": build_naflexvit,
           "transformers Siglip2 NaFlex (padded + mask)": build_siglip2}
BASE = "minicomp CRoPEViT (packed)"


def paired_leads(times: dict[str, list[float]], base: str = BASE) -> dict[str, dict]:
    """Per peer, minicomp's lead round by round (the peer's step time over the base's in the same
    round: > 1 where minicomp is faster), as `median_interval` of those ratios."""
    ref = times[base]
    leads = {}
    for name, ts in times.items():
        if name == base:
            continue
        if len(ts) != len(ref):
            raise ValueError(f"{name}: {len(ts)} timed rounds, {base}: {len(ref)}; leads pair rounds")
        leads[name] = median_interval([t / r for t, r in zip(ts, ref)])
    return leads


def _burn(stop):
    """A CPU-heavy neighbour: matrix products until told to stop."""
    torch.set_num_threads(1)
    a = torch.randn(512, 512)
    while not stop.is_set():
        a = (a @ a).tanh()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--reps", type=int, default=15,
                    help="rounds (with 15, the 95%% interval runs from the 4th to the 12th smallest lead)")
    ap.add_argument("--load", type=int, default=0, help="CPU-heavy processes to run beside the benchmark")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--profile", action="store_true", help="also print a torch.profiler table of minicomp's step")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    grids = mixed_grids()
    images = [torch.randn(3, h * PATCH, w * PATCH, device=device) for h, w in grids]
    n_real = sum(h * w for h, w in grids)
    n_pad = len(grids) * max(h * w for h, w in grids)
    systems = {name: build(args.depth, device) for name, build in SYSTEMS.items()}
    for name, (model, _) in systems.items():
        n = sum(p.numel() for p in model.parameters())
        print(f"  {name}: {n / 1e6:.1f}M parameters")
    stop = mp.Event()
    burners = [mp.Process(target=_burn, args=(stop,), daemon=True) for _ in range(args.load)]
    for b in burners:
        b.start()

    def step(model, fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = fn(images, grids)
        assert out.shape == (n_real, WIDTH), out.shape
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    times: dict[str, list[float]] = {n: [] for n in systems}
    try:
        for model, fn in systems.values():
            step(model, fn)  # warm-up
        for r in range(args.reps):
            order = list(systems) if r % 2 == 0 else list(systems)[::-1]
            for name in order:
                times[name].append(step(*systems[name]))
    finally:
        stop.set()
        for b in burners:
            b.join()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        if device.type == "cpu":  # else the profiler prints start/stop markers and a GPU count error
            os.environ.setdefault("KINETO_LOG_LEVEL", "6")
        with profile(activities=acts) as prof:
            step(*systems[BASE])
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
        if device.type == "cuda":
            print(prof.key_averages().table(sort_by=key, row_limit=15))
    threads = torch.get_num_threads()
    print(f"{device.type}{' fp32' if device.type == 'cpu' else ' bf16 autocast'}, {threads} threads"
          f"{f', {args.load} CPU-heavy processes beside it' if args.load else ''}; width {WIDTH}, {HEADS} heads, "
          f"depth {args.depth}; {len(grids)} images, {n_real:,} real tokens ({n_pad:,} padded slots); "
          f"forward + backward, median of {args.reps}")
    print(f"grids {grids}")
    base = statistics.median(times[BASE])
    leads = paired_leads(times)
    print(f"{'system':45s} {'computed':>9s} {'ms':>8s} {'tokens/s':>10s} {'minicomp ahead, paired [95%]':>29s} "
          f"{'vs minicomp':>12s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        computed = n_pad if "padded" in name else n_real
        lead = leads.get(name)
        paired = "" if lead is None else f"{lead['median']:.2f}x [{lead['low']:.2f}, {lead['high']:.2f}]"
        print(f"{name:45s} {computed:9,d} {med * 1000:8.1f} {n_real / med:10,.0f} {paired:>29s} {base / med:11.2f}x")
    cover = next(iter(leads.values()))["coverage"]
    print(f"minicomp ahead, paired: the median over the {args.reps} rounds of the peer's step time over "
          f"minicomp's in the same round (> 1: minicomp faster), with its order-statistic interval "
          + (f"(covers {cover:.1%} if the rounds are independent)" if args.reps > 5 else
             "(unbounded: 6 rounds or more give a 95% interval)")
          + "; vs minicomp: the peer's tokens/s over minicomp's, from the medians (< 1: minicomp faster)")


if __name__ == "__main__":
    main()
