"""Everything in minicomp that needs CUDA, checked in one run and printed as one table.

    tools/gpu_check.sh                                 # on a CUDA machine: the CUDA tests, then this
    python tools/gpu_check.py                          # this alone; without CUDA it says so and exits 0
    python tools/gpu_check.py --small --device cpu     # every check at toy sizes on CPU (a test runs it)

Rows:
- the bf16 vision tower (SigLIP so400m as C-RoPE, random weights, a packed native-resolution
  batch) against the same tower in fp32: relative error of the tokens and of the gradients;
- each packed-attention backend (`varlen`, compiled `flex`, `flash_attn` when installed) against
  `sdpa` on that tower in bf16: outputs and gradients, and the time of a forward + backward;
- the decoding loss's memory at Qwen2.5's 151,936 words over 32K supervised tokens, chunked
  (minicomp.xent) and dense;
- `benchmarks/train_step.py --paper`: paper-1b-siglip's step, MFU, peak memory, and the
  alignment's share of the step (caption pass and loss, each alone);
- `benchmarks/peers.py --device cuda`: minicomp's encoder against its peers.
A check that raises is a FAIL row with its error; the others still run. Exit status 1 if any
row failed.
"""
from __future__ import annotations

import argparse
import functools
import os
import re
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import minicomp as mc  # noqa: E402
from minicomp.xent import chunked_cross_entropy, logits_of  # noqa: E402
from peers import mixed_grids  # noqa: E402

ROWS: list[tuple[str, str, str, str]] = []  # (check, measured, target, verdict)


def row(check: str, measured: str, target: str = "", ok: bool | None = None) -> None:
    ROWS.append((check, measured, target, "" if ok is None else ("ok" if ok else "FAIL")))
    print(f"[{check}] {measured}" + (f"  (target {target})" if target else ""), flush=True)


def guarded(fn):
    @functools.wraps(fn)
    def run(args):
        t = time.perf_counter()
        try:
            fn(args)
        except Exception as e:  # one broken check must not hide the others
            traceback.print_exc()
            row(fn.__name__, f"raised {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}", ok=False)
        if torch.cuda.is_available():  # hand the cached blocks back: the benchmarks below run in their own processes
            torch.cuda.empty_cache()
        print(f"  ({fn.__name__}: {time.perf_counter() - t:.0f} s)", flush=True)
    return run


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# ---- the vision tower ----------------------------------------------------------------------

def vision_setup(args):
    torch.manual_seed(0)
    if args.small:
        vit = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, num_classes=0, depth=2,
                                embed_dim=64, num_heads=4, img_size=64)
        grids = [(h // 2, w // 2) for h, w in mixed_grids(4)]
    else:  # SigLIP so400m/14 at 384: the paper-1b-siglip tower
        vit = timm.create_model("vit_so400m_patch14_siglip_384", pretrained=False, num_classes=0)
        grids = mixed_grids(8)  # 84 … 1024 patches, aspect ratios 1:3 … 3:1
    enc = mc.CRoPEViT.from_timm(vit, rope=True).to(args.device).train()
    p = enc.patch_size
    g = torch.Generator().manual_seed(1)
    images = [torch.randn(3, h * p, w * p, generator=g).to(args.device) for h, w in grids]
    return enc, images, sum(h * w for h, w in grids)


def fwd_bwd(enc, images, bf16: bool, device: str):
    """Tokens (ΣN, D) in float32 and the flattened parameter gradients of mean(tokens²)."""
    enc.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        out = enc(images).tokens
    out.float().square().mean().backward()
    grads = torch.cat([p.grad.flatten().float() for p in enc.parameters() if p.grad is not None])
    return out.detach().float(), grads


@guarded
def vision_bf16(args):
    enc, images, n = vision_setup(args)
    out32, g32 = fwd_bwd(enc, images, False, args.device)
    out16, g16 = fwd_bwd(enc, images, True, args.device)
    e_out, e_g = rel(out16, out32), rel(g16, g32)
    row("vision bf16 vs fp32", f"{n} patches in {len(images)} images: tokens rel. error {e_out:.1e}, "
        f"gradients {e_g:.1e}", "tokens ≤ 3e-2, gradients ≤ 1e-1", e_out <= 3e-2 and e_g <= 1e-1)


@guarded
def backends(args):
    enc, images, n = vision_setup(args)
    bf16 = args.device == "cuda"
    names = ["sdpa", "varlen", "flex", "flash_attn"] if args.device == "cuda" else ["sdpa", "reference"]  # kernels: CUDA
    results = {}
    for name in names:
        enc.attn_backend = name
        try:
            out, g = fwd_bwd(enc, images, bf16, args.device)
        except (ImportError, RuntimeError, ValueError) as e:
            if name == "flash_attn" and isinstance(e, ImportError):
                row(f"attention {name}", "not installed: skipped")
                continue
            raise
        times = []
        for _ in range(args.reps):
            sync(args.device)
            t = time.perf_counter()
            fwd_bwd(enc, images, bf16, args.device)
            sync(args.device)
            times.append(time.perf_counter() - t)
        results[name] = (out, g, statistics.median(times))
    ref_out, ref_g, ref_t = results["sdpa"]
    row("attention sdpa", f"vision fwd+bwd {ref_t * 1000:.1f} ms ({n / ref_t:,.0f} patches/s)")
    for name, (out, g, t) in results.items():
        if name != "sdpa":
            e_out, e_g = rel(out, ref_out), rel(g, ref_g)
            row(f"attention {name} vs sdpa", f"tokens {e_out:.1e}, gradients {e_g:.1e}; {t * 1000:.1f} ms "
                f"({ref_t / t:.2f}x sdpa's speed)", "both ≤ 2e-2", e_out <= 2e-2 and e_g <= 2e-2)


# ---- the decoding loss's memory ------------------------------------------------------------

@guarded
def loss_memory(args):
    dev, cuda = args.device, args.device == "cuda"
    n, V, D = (32768, 151_936, 896) if not args.small else (2048, 40_000, 64)  # small: 5 chunks
    g = torch.Generator(device=dev).manual_seed(0)
    W = torch.randn(V, D, device=dev, generator=g).mul_(0.02).requires_grad_(True)
    W.grad = torch.zeros_like(W)  # a parameter's gradient exists whatever the loss: not counted below
    h = torch.randn(n, D, device=dev, generator=g, dtype=torch.bfloat16 if cuda else torch.float32, requires_grad=True)
    t = torch.randint(0, V, (n,), device=dev, generator=g)
    mem = torch.cuda if cuda else None
    out = {}
    for name, fn in (("chunked", lambda: chunked_cross_entropy(h, W, t)),
                     ("dense", lambda: torch.nn.functional.cross_entropy(logits_of(h, W), t))):
        h.grad = None
        sync(dev)
        base = mem.memory_allocated() if mem else 0
        if mem:
            mem.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=cuda):
            loss = fn()
        loss.backward()
        sync(dev)
        peak = mem.max_memory_allocated() - base if mem else float("nan")
        out[name] = (peak, time.perf_counter() - t0, loss.item(), h.grad.clone())
        W.grad.zero_()
    (mc_, tc, lc, gc), (md, td, ld, gd) = out["chunked"], out["dense"]
    row("decoding loss memory", f"{n:,} tokens x {V:,} words: chunked {mc_ / 2**30:.2f} GiB, {tc * 1000:.0f} ms; "
        f"dense {md / 2**30:.1f} GiB, {td * 1000:.0f} ms; losses {lc:.5f} / {ld:.5f}, grad rel. {rel(gc, gd):.1e}",
        "chunked ≤ 1 GiB above inputs" if cuda else "equal losses (memory: CUDA only)",
        (mc_ <= 2**30 or not cuda) and abs(lc - ld) <= 1e-3 * abs(ld) and rel(gc, gd) <= 1e-2)


# ---- the benchmarks, as subprocesses -------------------------------------------------------

def _script(args, cmd: list[str], timeout: int) -> str:
    print("$ " + " ".join(cmd), flush=True)
    p = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    print(p.stdout + p.stderr[-3000:], flush=True)
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
    return p.stdout


@guarded
def paper_step(args):
    if args.device != "cuda":
        row("paper-1b-siglip step", "CUDA only: skipped")
        return
    out = _script(args, ["benchmarks/train_step.py", "--paper", "--steps", "6", "--batch", str(args.batch),
                         "--peak-tflops", str(args.peak_tflops)], 240)
    for line in out.splitlines():
        if line.startswith(("step ", "peak GPU", "MFU", "paper-1b")):
            row("paper-1b-siglip step", line)
        m = re.match(r"(caption pass \(F_t\)|alignment loss) ([\d.]+) ms, ([\d.]+)% of the step", line)
        if m:
            share = float(m.group(3))
            row(f"{m.group(1)} share", line, "≤ 5%" if m.group(1) == "alignment loss" else "",
                share <= 5 if m.group(1) == "alignment loss" else None)


@guarded
def peers(args):
    if args.device != "cuda":
        row("peers", "CUDA only here (CPU: benchmarks/peers.py): skipped")
        return
    out = _script(args, ["benchmarks/peers.py", "--device", "cuda", "--reps", "7"], 150)
    for line in out.splitlines():
        if re.search(r"\d\.\d\dx$", line.strip()):  # the table's rows end in the ratio to minicomp
            row("peers (cuda)", line.strip())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="toy sizes (a CPU smoke run of every check)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4, help="images per paper-1b step (its micro-batch: 4)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    ap.add_argument("--only", nargs="+", help="run only these checks")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check (on CPU: --small --device cpu)")
        return
    dev = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"gpu_check on {dev}: torch {torch.__version__}, timm {timm.__version__}", flush=True)
    for check in (vision_bf16, backends, loss_memory, paper_step, peers):
        if not args.only or check.__name__ in args.only:
            check(args)
    w = [max(len(r[i]) for r in ROWS) for i in (0, 2, 3)]
    print(f"\n| {'check':{w[0]}} | measured | {'target':{w[1]}} | {'':{w[2]}} |")
    print(f"|{'-' * (w[0] + 2)}|---|{'-' * (w[1] + 2)}|{'-' * (w[2] + 2)}|")
    for c, m, t, v in ROWS:
        print(f"| {c:{w[0]}} | {m} | {t:{w[1]}} | {v:{w[2]}} |")
    sys.exit(1 if any(r[3] == "FAIL" for r in ROWS) else 0)


if __name__ == "__main__":
    main()
