"""Training-step throughput: step time, samples/s, tokens/s and peak memory.

    python benchmarks/train_step.py                     # the tiny preset's Stage II-native step, CPU
    python benchmarks/train_step.py --paper             # CUDA: paper-1b-siglip's architecture (random
                                                        # weights), a native-resolution batch, with MFU

MFU (model FLOPs utilisation) counts 6 FLOPs per parameter per token for the LLM and for the
ViT's patches (forward + backward), plus the attention score and value products, over the
step time and the GPU's dense bf16 peak (--peak-tflops, 989 for an H100 SXM).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

import minicomp as mc
import minicomp.data as d
from minicomp.config import load_config
from minicomp.stages import apply_stage


def model_flops(model, batch) -> float:
    """Approximate training FLOPs of one forward + backward on `batch`."""
    vit_params = sum(p.numel() for p in model.vision.parameters())
    llm_params = sum(p.numel() for n, p in model.llm.named_parameters() if "embed_tokens" not in n)
    patches = [int(h * w) for h, w in (torch.tensor([x.shape[1:] for x in batch.images]) // model.vision.patch_size).tolist()]
    tokens = int(batch.attention_mask.sum())
    L, D = model.llm.config.num_hidden_layers, model.llm.config.hidden_size
    attn_llm = sum(4 * n * n * D * L for n in batch.attention_mask.sum(1).tolist())  # QKᵀ and AV
    attn_vit = sum(4 * n * n * model.vision.embed_dim * len(model.vision.blocks) for n in patches)
    return 3 * (2 * vit_params * sum(patches) + 2 * llm_params * tokens + attn_llm + attn_vit)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paper", action="store_true", help="paper-1b-siglip's architecture on CUDA")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    args = ap.parse_args()
    device = "cuda" if args.paper else "cpu"
    if args.paper:
        if not torch.cuda.is_available():
            raise SystemExit("--paper needs a CUDA GPU")
        cfg = load_config("paper-1b-siglip")
        model = mc.CoMPModel.from_pretrained(pretrained=False, **cfg.model).to(device)
        stage, batch_size = cfg.stage("II-native"), args.batch or 4  # no tokenizer offline: synthetic ids below
    else:
        cfg = load_config("tiny")
        model = mc.CoMPModel.from_preset("tiny")
        stage, batch_size = cfg.stage("II-native"), args.batch or cfg.global_batch
    groups = apply_stage(model, stage, log_fn=lambda *_: None)
    opt = torch.optim.AdamW(groups)
    ds = d.SyntheticDataset("train", batch_size * (args.steps + 2), seed=1, task="caption")
    if model.tokenizer is not None:
        proc = model.processor(max_tokens=stage.max_tokens)
        batches = [d.collate([proc(ds[i]) for i in range(j, j + batch_size)], model.tokenizer.pad_token_id)
                   for j in range(0, len(ds), batch_size)]
    else:  # full scale offline: real images at native resolution, random caption ids
        batches = [_random_text_batch(model, [ds[i] for i in range(j, j + batch_size)], stage.max_tokens)
                   for j in range(0, len(ds), batch_size)]
    batches = [b.to(device) for b in batches]

    def step(b):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(b).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for b in batches[:2]:
        step(b)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for b in batches[2:]:
        t = time.perf_counter()
        step(b)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    b = batches[2]
    tokens = int(b.attention_mask.sum())
    vis = int((b.input_ids == model.config.image_token_id).sum()) / max(1, len(b.images))
    print(f"{'paper-1b-siglip (random weights), CUDA bf16' if args.paper else 'tiny preset, CPU fp32'}: "
          f"stage {stage.name}, batch {batch_size}, {vis:.0f} visual tokens per image, {tokens} tokens per batch")
    print(f"step {med * 1000:.0f} ms (median of {len(times)}), {batch_size / med:.1f} samples/s, {tokens / med:,.0f} tokens/s")
    if device == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
        print(f"MFU {model_flops(model, b) / med / (args.peak_tflops * 1e12):.1%} of {args.peak_tflops:g} TFLOPs")
    else:
        print(f"peak process memory {max(rss0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024:.0f} MB "
              f"(max RSS, whole process)")
        print(f"model FLOPs per step {model_flops(model, b) / 1e9:.1f} GFLOP -> {model_flops(model, b) / med / 1e9:.1f} GFLOP/s")


def _random_text_batch(model, samples, max_tokens):
    from minicomp.data.resize import resize_to_budget, to_tensor
    cfg, p = model.vision.pretrained_cfg, model.vision.patch_size
    f = p * model.config.merge
    images, ids, labels = [], [], []
    for s in samples:
        img = resize_to_budget(s.image, p, model.config.merge, 4, max_tokens)
        images.append(to_tensor(img, cfg["mean"], cfg["std"]))
        n = (img.height // f) * (img.width // f)
        text = torch.randint(0, 150_000, (64,)).tolist()
        row = text[:8] + [model.config.image_token_id] * n + text[8:]
        ids.append(row)
        labels.append([-100] * (8 + n) + text[8:])
    L = max(map(len, ids))
    pad = lambda rows, v: torch.tensor([r + [v] * (L - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (L - len(r)) for r in ids])
    align = torch.randint(0, 150_000, (len(samples), 48))
    return d.Batch(images, torch.arange(len(samples)), pad(ids, 0), mask, pad(labels, -100), align,
                   torch.ones_like(align), [s.meta["id"] for s in samples])


if __name__ == "__main__":
    main()
