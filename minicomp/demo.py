"""The C-RoPE demo: encode native-resolution images of several aspect ratios in one packed
batch with any timm ViT, check it against timm, and print what happened."""
from __future__ import annotations

import time

import numpy as np
import timm
import torch
from PIL import Image, ImageDraw, ImageFont

from .data.resize import to_tensor
from .vision import CRoPEViT

# (width, height) in patches of each demo image: wide, tall, square, small
DEMO_GRIDS = [(36, 12), (10, 30), (24, 24), (8, 6)]


def demo_image(w_px: int, h_px: int, seed: int = 0) -> Image.Image:
    """A text-rich synthetic image: lines of small digits and a bar chart, deterministic."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (w_px, h_px), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=10)
    for y in range(4, h_px // 2, 14):  # rows of 10-px digits in the top half
        draw.text((4, y), " ".join(str(v) for v in rng.integers(0, 999, size=w_px // 28 + 1)), fill="black", font=font)
    n_bars = max(2, w_px // 40)
    bw = w_px / (2 * n_bars)
    for i, v in enumerate(rng.uniform(0.1, 0.45, size=n_bars)):  # bars in the bottom half
        x0 = bw * (2 * i + 0.5)
        draw.rectangle([x0, h_px * (1 - v), x0 + bw, h_px - 2], fill=tuple(rng.integers(0, 200, 3).tolist()))
    return img


def run_demo(model: str = "vit_base_patch16_siglip_224", depth: int | None = None, pretrained: bool = False,
             checkpoint: str | None = None, rope_theta: float = 10000.0, print_fn=print) -> dict:
    """Encode the demo images with C-RoPE; returns the measured numbers it printed and the encoder.

    Weights: random (default), the hub's (`pretrained`), or a local file (`checkpoint`, loaded
    through timm's `pretrained_cfg_overlay=dict(file=...)`, so no hub is contacted)."""
    torch.manual_seed(0)
    kwargs = {"depth": depth} if depth else {}
    if checkpoint:
        kwargs["pretrained_cfg_overlay"] = dict(file=checkpoint)
    vit = timm.create_model(model, pretrained=pretrained or bool(checkpoint), **kwargs).eval()
    enc = CRoPEViT.from_timm(vit, rope=True, rope_theta=rope_theta)
    p, cfg = enc.patch_size, vit.pretrained_cfg
    mean, std = cfg.get("mean", (0.5,) * 3), cfg.get("std", (0.5,) * 3)
    weights = "pretrained" if pretrained else (f"file {checkpoint}" if checkpoint else "random init")
    print_fn(f"minicomp C-RoPE demo: {model} ({weights}, depth {len(enc.blocks)}, width {enc.embed_dim}, "
             f"{enc.num_heads} heads × {enc.head_dim})")
    print_fn(f"  patch {p} px, learned APE on a {enc.ape_grid[0]}×{enc.ape_grid[1]} grid "
             f"({enc.ape_mode}-resampled per image), RoPE-2D θ={rope_theta:g} with {enc.head_dim // 4} "
             f"frequencies per axis, prefix tokens: "
             f"{f'{enc.num_prefix} ({enc.prefix_tokens})' if enc.num_prefix else 'none'}")
    images = [to_tensor(demo_image(gw * p, gh * p, seed=i), mean, std) for i, (gw, gh) in enumerate(DEMO_GRIDS)]

    with torch.no_grad():
        enc(images)  # warm-up, so the timing below is a steady-state one
        t0 = time.perf_counter()
        out = enc(images)
        t_packed = time.perf_counter() - t0
        alone = [enc([img]).tokens for img in images]
        pack_diff = max((a - b).abs().max().item() for a, b in zip(out.split(), alone))
        _, H, W = cfg["input_size"]
        gh, gw = enc.ape_grid
        x = torch.randn(1, 3, H, W)
        enc.rope = False
        timm_diff = (enc([x[0, :, :gh * p, :gw * p]]).tokens - vit.forward_features(x)[0, vit.num_prefix_tokens:]).abs().max().item()
        enc.rope = True

    n_tok = out.tokens.shape[0]
    print_fn(f"\nEncoded {len(images)} native-resolution images in ONE packed sequence of {n_tok} tokens "
             f"({t_packed:.2f} s, {n_tok / t_packed:,.0f} tokens/s on {torch.get_num_threads()} CPU threads):")
    print_fn(f"  {'image':>5}  {'pixels H×W':>11}  {'W:H':>5}  {'grid h×w':>9}  {'tokens':>6}  "
             f"| resized to a fixed {H}×{W}: tokens, a 10×6 px (H×W) digit becomes")
    for i, ((w_p, h_p), t) in enumerate(zip(DEMO_GRIDS, out.split())):
        sy, sx = H / (h_p * p), W / (w_p * p)  # squash factors of a fixed-size resize
        print_fn(f"  {i:>5}  {h_p * p:>5}×{w_p * p:<5}  {w_p / h_p:>5.2f}  {h_p:>4}×{w_p:<4}  {t.shape[0]:>6}  "
                 f"| {gh * gw:>4}, {10 * sy:.1f}×{6 * sx:.1f} px")
    print_fn("\nChecks:")
    print_fn(f"  packed batch == each image encoded alone: max |diff| = {pack_diff:.1e}")
    print_fn(f"  rope=False at {H}×{W} == timm forward_features: max |diff| = {timm_diff:.1e}")
    print_fn(f"  output: Packed(tokens {tuple(out.tokens.shape)}, grid_hw {out.grid_hw.tolist()}, "
             f"cu_seqlens {out.cu_seqlens.tolist()})")
    return {"tokens": n_tok, "grids": out.grid_hw.tolist(), "pack_diff": pack_diff, "timm_diff": timm_diff,
            "seconds": t_packed, "encoder": enc}
