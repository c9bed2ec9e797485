"""The toy VFMs: small timm ViTs with a learned APE, pretrained at one fixed low resolution
(64×64, 8×8 patches) on the synthetic world, i.e. exactly the kind of model CoMP adapts.

- ``vision``: vision-only, in DINOv2's role (same timm architecture family: class token,
  layer scale, ImageNet mean/std). It never sees text. DINOv2's self-supervision does not fit a
  few CPU minutes: a masked-image-modelling version we tried gave linear probes no better than
  random weights. So it is pretrained like a supervised ImageNet ViT, with one classification
  head per ground-truth attribute of the synthetic world (`ATTRIBUTES`).
- ``siglip``: image–text contrastive with SigLIP's sigmoid loss (same timm architecture family:
  no class token, attention-pool head, mean/std 0.5), against a small bag-of-words text tower
  over the toy tokenizer. As in CoMP, only the vision tower is kept.

Both are saved with timm's `save_for_hf` (config.json + model.safetensors), so they load with
``timm.create_model("local-dir:<path>", pretrained=True)``, the same call as a hub model.
Each build log holds linear-probe accuracies (see `probe_accuracy`) at the model's own resolution.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import save_for_hf
from tqdm.auto import tqdm
from transformers import AutoTokenizer, get_cosine_schedule_with_warmup

from ..data.resize import resize_fixed, resize_to_budget, to_tensor
from ..data.synthetic import COLORS, FAMILIES, make_sample
from ..vision import CRoPEViT

RESOLUTION = 64
TOY_VIT = dict(img_size=RESOLUTION, patch_size=8, embed_dim=128, depth=4, num_heads=4, mlp_ratio=3.0, num_classes=0)
TOY_VFMS = {"vision": "vit_small_patch14_dinov2", "siglip": "vit_base_patch16_siglip_224"}  # kind -> timm architecture
# attribute -> number of classes; each is probed, and the vision-only VFM is pretrained on them
ATTRIBUTES = {"family": 3, "count": 9, "left_colour": len(COLORS), "tallest": 3, "lines": 4}


def create_toy_vit(kind: str) -> nn.Module:
    """A randomly initialised toy ViT of the given kind ("vision" or "siglip")."""
    if kind not in TOY_VFMS:
        raise ValueError(f"kind={kind!r}, expected one of {tuple(TOY_VFMS)}")
    pool = {"vision": "avg", "siglip": "map"}[kind]  # the embedding the objective trains
    return timm.create_model(TOY_VFMS[kind], pretrained=False, global_pool=pool, **TOY_VIT)


def attribute(meta: dict, name: str) -> int:
    """Ground-truth class of one attribute, -1 where it does not apply to the sample's family.

    family: document/chart/scene; count: objects in a chart or scene (0–8); left_colour: colour
    of a scene's leftmost shape; tallest: which third of a chart holds its tallest bar; lines: a
    document's line count in fives (1–5, 6–10, 11–15, 16–20)."""
    f = meta["family"]
    if name == "family":
        return FAMILIES.index(f)
    if name == "count":
        return len(meta["labels"]) if f == "chart" else len(meta["objects"]) if f == "scene" else -1
    if name == "left_colour":
        return list(COLORS).index(meta["objects"][0]["color"]) if f == "scene" else -1
    if name == "tallest":
        v = meta.get("values")
        return min(2, 3 * max(range(len(v)), key=v.__getitem__) // len(v)) if f == "chart" else -1
    if name == "lines":
        return min(3, (len(meta["lines"]) - 1) // 5) if f == "document" else -1
    raise ValueError(f"attribute {name!r}, expected one of {tuple(ATTRIBUTES)}")


def attributes(metas: list[dict]) -> torch.Tensor:
    """(n, len(ATTRIBUTES)) long: every attribute of every sample (-1 where it does not apply)."""
    return torch.tensor([[attribute(m, a) for a in ATTRIBUTES] for m in metas])


def render_fixed(split: str, n: int, size: int = RESOLUTION, seed: int = 0):
    """n samples of a split, squashed to size×size: (uint8 images (n, 3, size, size), captions, metas)."""
    imgs, caps, metas = [], [], []
    for i in tqdm(range(n), desc=f"render {split}", unit="img", leave=False):
        s = make_sample(seed, split, i)
        img = resize_fixed(s.image, size)
        imgs.append(torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1))
        caps.append(s.caption)
        metas.append(s.meta)
    return torch.stack(imgs), caps, metas  # (n, 3, size, size)


def normalise(images: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """uint8 (n, 3, H, W) -> float, with the model's own mean and std (timm pretrained_cfg)."""
    cfg = model.pretrained_cfg
    mean, std = torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


# ---- pretraining objectives -----------------------------------------------------------------

class AttributeHeads(nn.Module):
    """Vision-only supervised pretraining: one linear head per attribute on the ViT's pooled
    embedding; the loss is the sum of the cross-entropies where an attribute applies."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit
        self.heads = nn.ModuleDict({a: nn.Linear(vit.num_features, n) for a, n in ATTRIBUTES.items()})

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = self.vit(x)  # (B, D): mean of the patch tokens, pre-logits
        return sum(F.cross_entropy(head(z), y[:, j], ignore_index=-1) for j, head in enumerate(self.heads.values()))


class SigLIP(nn.Module):
    """SigLIP's pairwise sigmoid loss between the ViT's pooled output and a bag-of-words text tower."""

    def __init__(self, vit: nn.Module, vocab_size: int, dim: int = 128):
        super().__init__()
        self.vit = vit
        self.text = nn.EmbeddingBag(vocab_size, dim, mode="mean")
        self.text_proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, vit.num_features))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))  # SigLIP's init: t = 10, b = -10
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))

    def embed_text(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(self.text(ids, offsets)), dim=-1)  # (B, D)

    def forward(self, x: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        img = F.normalize(self.vit(x), dim=-1)  # (B, D): attention-pool head, pre-logits
        logits = img @ self.embed_text(ids, offsets).T * self.logit_scale.exp() + self.logit_bias  # (B, B)
        labels = 2 * torch.eye(len(x), device=x.device) - 1  # +1 on matching pairs, -1 elsewhere
        return -F.logsigmoid(labels * logits).sum() / len(x)


# ---- linear probes --------------------------------------------------------------------------

@torch.no_grad()
def pooled_features(vit: nn.Module, images: list[torch.Tensor], batch: int = 64) -> torch.Tensor:
    """The ViT's own pooled embedding (timm's forward_head, pre-logits) of images of any size:
    the patch grid comes from `CRoPEViT` with RoPE off, i.e. by APE interpolation alone -> (n, D)."""
    enc = CRoPEViT.from_timm(vit, rope=False).eval()
    vit.eval()
    out = []
    for i in range(0, len(images), batch):
        packed = enc(images[i:i + batch])
        for j, t in enumerate(packed.split()):  # (N_i, D)
            if packed.prefix is not None:  # timm's pooling expects the prefix tokens in front
                t = torch.cat([packed.prefix[j], t])  # (n_prefix + N_i, D)
            out.append(vit.forward_head(t[None], pre_logits=True)[0])  # "avg", "token" or "map" pooling, fc_norm
    return torch.stack(out)


def fit_probe(x: torch.Tensor, y: torch.Tensor, steps: int = 200, weight_decay: float = 1e-3) -> nn.Module:
    """Multinomial logistic regression on standardised features (full-batch L-BFGS)."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    lin = nn.Linear(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=steps, line_search_fn="strong_wolfe")
    xs = (x - mean) / std

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(xs), y) + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return nn.Sequential(_Standardise(mean, std), lin).eval()


class _Standardise(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x):
        return (x - self.mean) / self.std


def probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                   test_y: torch.Tensor) -> dict[str, float]:
    """One linear probe per attribute (columns of y, as `attributes`), fitted on train features
    where the attribute applies; test accuracy per attribute and their mean."""
    out = {}
    for j, name in enumerate(ATTRIBUTES):
        tr, te = train_y[:, j] >= 0, test_y[:, j] >= 0
        probe = fit_probe(train_x[tr], train_y[tr, j])
        with torch.no_grad():
            out[name] = float((probe(test_x[te]).argmax(1) == test_y[te, j]).float().mean())
    out["mean"] = sum(out.values()) / len(ATTRIBUTES)
    return out


def probe_images(split: str, n: int, seed: int = 1):
    """n samples of a split as native-size PIL images with their attribute labels (n, A)."""
    samples = [make_sample(seed, split, i) for i in range(n)]
    return [s.image for s in samples], attributes([s.meta for s in samples])


def measure_probes(vit: nn.Module, train, test, size: int | None = RESOLUTION, max_tokens: int = 256) -> dict:
    """Probe accuracy with images squashed to size×size, or (size=None) at native resolution within
    `max_tokens` patches. `train`, `test`: (PIL images, labels) from `probe_images`. The ViT sees
    other sizes through APE interpolation alone (CRoPEViT, RoPE off)."""
    cfg, p = vit.pretrained_cfg, vit.patch_embed.patch_size[0]

    def prep(img):
        img = resize_fixed(img, size) if size else resize_to_budget(img, p, 1, 1, max_tokens)
        return to_tensor(img, cfg["mean"], cfg["std"])

    feats = [pooled_features(vit, [prep(im) for im in imgs]) for imgs, _ in (train, test)]
    return probe_accuracy(feats[0], train[1], feats[1], test[1])


@torch.no_grad()
def retrieval_accuracy(objective: SigLIP, images: torch.Tensor, cap_ids: list[torch.Tensor], group: int = 100) -> float:
    """Zero-shot image -> caption top-1 accuracy among groups of `group` test pairs (chance 1/group)."""
    objective.eval()
    group, hits = min(group, len(images)), 0
    for i in range(0, len(images) - group + 1, group):
        img = F.normalize(objective.vit(images[i:i + group]), dim=-1)  # (group, D)
        ids = cap_ids[i:i + group]
        offsets = torch.tensor([0] + [len(t) for t in ids[:-1]]).cumsum(0)
        txt = objective.embed_text(torch.cat(ids), offsets)  # (group, D)
        hits += int((img @ txt.T).argmax(1).eq(torch.arange(group)).sum())
    return hits / (len(images) // group * group)


# ---- the build ------------------------------------------------------------------------------

def build_toy_vfm(kind: str, out: str | Path, tokenizer: str | Path | None = None, steps: int = 1000,
                  batch: int = 64, lr: float = 1e-3, n_train: int = 8000, n_probe: int = 2000,
                  n_test: int = 1000, seed: int = 0) -> dict:
    """Pretrain a toy VFM from scratch at 64×64, measure its probes (and, for siglip, zero-shot
    retrieval) against the same ViT with random weights, and save it to `out` (timm format) with
    a `build_log.json`. `tokenizer` (a saved tokenizer dir) is needed for siglip."""
    t0 = time.time()
    torch.manual_seed(seed)
    vit = create_toy_vit(kind)
    random_vit = create_toy_vit(kind).eval()  # the baseline the probes are compared with
    random_vit.load_state_dict(vit.state_dict())
    images, captions, metas = render_fixed("train", n_train, seed=seed)
    x_all = normalise(images, vit)  # (n_train, 3, 64, 64)
    if kind == "vision":
        objective, y_all = AttributeHeads(vit), attributes(metas)
    else:
        if tokenizer is None:
            raise ValueError("the siglip toy VFM needs `tokenizer` (the toy LLM's tokenizer directory)")
        tok = AutoTokenizer.from_pretrained(tokenizer)
        tokens = lambda caps: [torch.tensor(tok(c, add_special_tokens=False)["input_ids"]) for c in caps]
        cap_ids = tokens(captions)
        objective = SigLIP(vit, len(tok))
    opt = torch.optim.AdamW(objective.parameters(), lr=lr, weight_decay=0.05)
    sched = get_cosine_schedule_with_warmup(opt, max(1, steps // 20), steps)
    g = torch.Generator().manual_seed(seed)
    losses = []
    objective.train()
    for _ in tqdm(range(steps), desc=f"toy VFM ({kind})", unit="step"):
        idx = torch.randint(0, n_train, (batch,), generator=g)
        if kind == "vision":
            loss = objective(x_all[idx], y_all[idx])
        else:
            ids = [cap_ids[i] for i in idx.tolist()]
            offsets = torch.tensor([0] + [len(t) for t in ids[:-1]]).cumsum(0)  # (batch,)
            loss = objective(x_all[idx], torch.cat(ids), offsets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(objective.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    vit.eval()
    train, test = probe_images("train", n_probe, seed + 1), probe_images("test", n_test, seed + 1)
    log = {"kind": kind, "architecture": TOY_VFMS[kind], "resolution": RESOLUTION, "steps": steps,
           "batch": batch, "train_images": n_train, "loss_first": sum(losses[:20]) / 20,
           "loss_last": sum(losses[-20:]) / 20, "probe_accuracy": measure_probes(vit, train, test),
           "probe_accuracy_random_init": measure_probes(random_vit, train, test)}
    if kind == "siglip":
        test_imgs, test_caps, _ = render_fixed("test", n_test, seed=seed + 1)
        log["retrieval_top1_of_100"] = retrieval_accuracy(objective, normalise(test_imgs, vit), tokens(test_caps))
    log.update(parameters=sum(p.numel() for p in vit.parameters()), minutes=(time.time() - t0) / 60, seed=seed)
    out = Path(out)
    save_for_hf(vit, out, safe_serialization=True, model_config={"pretrained_cfg": {
        "tag": f"minicomp_toy_{kind}", "license": "apache-2.0", "crop_pct": 1.0}})
    (out / "build_log.json").write_text(json.dumps(log, indent=2) + "\n")
    return log
