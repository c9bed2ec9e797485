"""The authors' released CoMP VFMs as CRoPEViTs: key layouts, architecture switches, merger.

The authors (github SliMM-X/CoMP-MM) release each VFM as a Hugging Face folder whose vision
model takes pre-cut patches in 2×2 window order and ends in their patch merger. Two layouts:

- **CoMP-SigLIP** (`comp-siglip`): `vision_model.embeddings.patch_embedding` (conv),
  `.position_embedding.weight` (h0·w0, D), layers `vision_model.encoder.layers.i` with separate
  `self_attn.{q,k,v}_proj`, `out_proj`, `layer_norm1/2`, `mlp.fc1/fc2` (tanh GELU), no
  post-layernorm; `merger.ln_q` and `merger.mlp.{0,2}`.
- **CoMP-DINOv2** (`comp-dinov2`): `embeddings.patch_embeddings.projection`,
  `embeddings.position_embeddings` (1, 1 + h0·w0, D; the class row is never used: no class token
  is fed), layers `encoder.layer.i` with `attention.attention.{query,key,value}`,
  `attention.output.dense`, `layer_scale1/2.lambda1`, `norm1/2`, `mlp.fc1/fc2` (exact GELU), a
  final `layernorm`; `merger` as above.

Both add the raster-order APE to window-ordered tokens, so the converted encoder has
`legacy_ape_order=True` (DESIGN.md §2). `convert` maps the keys (q, k, v fused into timm's qkv),
builds the matching timm ViT and wraps it, and `save` writes minicomp's VFM folder (timm's
`config.json` + `model.safetensors`, `crope.json`) plus `merger.safetensors`/`merger.json`, which
`CoMPModel.from_pretrained(vision=folder)` loads with the encoder.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import timm
import torch
import torch.nn as nn

from .merger import PatchMerger
from .vision import CRoPEViT

LAYOUTS = ("comp-siglip", "comp-dinov2")
MERGER_WEIGHTS, MERGER_CONFIG = "merger.safetensors", "merger.json"
# one key that marks each layout, after the checkpoint's own prefix
_MARKERS = {"comp-siglip": "vision_model.embeddings.patch_embedding.weight",
            "comp-dinov2": "embeddings.patch_embeddings.projection.weight"}
_ACTS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu", "quick_gelu": "quick_gelu"}


def read_checkpoint(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The state dict (every *.safetensors, else pytorch_model*.bin) and config.json of a folder."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json; expected a Hugging Face checkpoint folder")
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors or pytorch_model*.bin weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file
            state.update(load_file(f))
        else:
            state.update(torch.load(f, map_location="cpu", weights_only=True))
    return state, json.loads((folder / "config.json").read_text())


def detect_layout(state: dict[str, torch.Tensor]) -> tuple[str, str]:
    """(layout, prefix) of a state dict: the prefix is whatever precedes the layout's keys (for a
    vision tower saved inside a bigger model). A ValueError names what was looked for."""
    for layout, marker in _MARKERS.items():
        for key in state:
            if key.endswith(marker):
                return layout, key[: -len(marker)]
    sample = sorted(state)[:8]
    raise ValueError(f"checkpoint keys fit neither layout {LAYOUTS}: no key ends with "
                     f"{sorted(_MARKERS.values())}; its first keys are {sample}")


def _vision_config(config: dict) -> dict:
    """The vision part of a checkpoint's config (top level, or `vision_config` of a SigLIP pair)."""
    vc = dict(config.get("vision_config") or config)
    for key in ("llm_hidden_size", "spatial_merge_size", "use_rope"):
        vc.setdefault(key, config.get(key))
    return vc


def build_timm_vit(layout: str, vc: dict) -> nn.Module:
    """A timm VisionTransformer of the checkpoint's shape (random weights)."""
    D, inter = int(vc["hidden_size"]), int(vc["intermediate_size"]) if "intermediate_size" in vc else None
    if layout == "comp-dinov2":
        inter = inter or int(D * vc.get("mlp_ratio", 4))
        if vc.get("use_swiglu_ffn"):
            raise ValueError("comp-dinov2 with use_swiglu_ffn (DINOv2-giant) is not supported")
    if inter is None:
        raise ValueError(f"{layout}: config.json has no intermediate_size")
    act = vc.get("hidden_act", "gelu_pytorch_tanh" if layout == "comp-siglip" else "gelu")
    if act not in _ACTS:
        raise ValueError(f"hidden_act {act!r} is not one of {sorted(_ACTS)}")
    mlp_ratio = inter / D
    if int(D * mlp_ratio) != inter:  # timm sizes the MLP as int(D · ratio)
        mlp_ratio = (inter + 0.5) / D
    if float(vc.get("layer_norm_eps", 1e-6)) != 1e-6:
        raise ValueError(f"layer_norm_eps {vc['layer_norm_eps']} is not supported (timm's ViTs here use 1e-6)")
    kw = dict(img_size=int(vc["image_size"]), patch_size=int(vc["patch_size"]), embed_dim=D,
              depth=int(vc["num_hidden_layers"]), num_heads=int(vc["num_attention_heads"]), mlp_ratio=mlp_ratio,
              num_classes=0, global_pool="", act_layer=_ACTS[act])
    if layout == "comp-siglip":
        name = "vit_so400m_patch14_siglip_384"
        kw.update(class_token=False)
    else:
        name = "vit_large_patch14_dinov2"
        kw.update(class_token=True, init_values=float(vc.get("layerscale_value", 1.0)),
                  qkv_bias=bool(vc.get("qkv_bias", True)))
    return timm.create_model(name, pretrained=False, **kw)


def _siglip_keys(i: int) -> dict[str, str]:
    a, b = f"vision_model.encoder.layers.{i}.", f"blocks.{i}."
    return {a + "layer_norm1": b + "norm1", a + "layer_norm2": b + "norm2", a + "self_attn.out_proj": b + "attn.proj",
            a + "mlp.fc1": b + "mlp.fc1", a + "mlp.fc2": b + "mlp.fc2"}


def _dinov2_keys(i: int) -> dict[str, str]:
    a, b = f"encoder.layer.{i}.", f"blocks.{i}."
    return {a + "norm1": b + "norm1", a + "norm2": b + "norm2", a + "attention.output.dense": b + "attn.proj",
            a + "mlp.fc1": b + "mlp.fc1", a + "mlp.fc2": b + "mlp.fc2"}


def map_state_dict(layout: str, state: dict[str, torch.Tensor], prefix: str, depth: int
                   ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Their keys -> (timm ViT state dict, PatchMerger state dict). Raises naming the missing and
    unexpected keys."""
    src = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    vit, used = {}, set()

    def take(key):
        if key not in src:
            raise KeyError(key)
        used.add(key)
        return src[key]

    missing = []

    def put(dst, key):
        try:
            vit[dst] = take(key)
        except KeyError:
            missing.append(prefix + key)

    siglip = layout == "comp-siglip"
    emb = "vision_model.embeddings." if siglip else "embeddings."
    put("patch_embed.proj.weight", emb + ("patch_embedding.weight" if siglip else "patch_embeddings.projection.weight"))
    put("patch_embed.proj.bias", emb + ("patch_embedding.bias" if siglip else "patch_embeddings.projection.bias"))
    if siglip:
        try:
            vit["pos_embed"] = take(emb + "position_embedding.weight")[None]  # (1, h0·w0, D)
        except KeyError:
            missing.append(prefix + emb + "position_embedding.weight")
    else:
        put("pos_embed", emb + "position_embeddings")  # (1, 1 + h0·w0, D), the class row included
        if emb + "cls_token" in src:
            put("cls_token", emb + "cls_token")
        if emb + "mask_token" in src:
            used.add(emb + "mask_token")
        put("norm.weight", "layernorm.weight")
        put("norm.bias", "layernorm.bias")
    for i in range(depth):
        names = _siglip_keys(i) if siglip else _dinov2_keys(i)
        for a, b in names.items():
            for t in ("weight", "bias"):
                put(f"{b}.{t}", f"{a}.{t}")
        attn = f"vision_model.encoder.layers.{i}.self_attn." if siglip else f"encoder.layer.{i}.attention.attention."
        qkv = ("q_proj", "k_proj", "v_proj") if siglip else ("query", "key", "value")
        for t in ("weight", "bias"):
            keys = [f"{attn}{p}.{t}" for p in qkv]
            used.update(k for k in keys if k in src)
            if all(k in src for k in keys):
                vit[f"blocks.{i}.attn.qkv.{t}"] = torch.cat([src[k] for k in keys])  # q, k, v -> (3D, …)
            else:
                missing += [prefix + k for k in keys if k not in src]
        if not siglip:
            put(f"blocks.{i}.ls1.gamma", f"encoder.layer.{i}.layer_scale1.lambda1")
            put(f"blocks.{i}.ls2.gamma", f"encoder.layer.{i}.layer_scale2.lambda1")
    merger = {}
    for a, b in (("merger.ln_q", "norm"), ("merger.mlp.0", "mlp.0"), ("merger.mlp.2", "mlp.2")):
        for t in ("weight", "bias"):
            if f"{a}.{t}" in src:
                merger[f"{b}.{t}"] = take(f"{a}.{t}")
    if merger and len(merger) != 6:  # a merger present in part
        missing += [f"{prefix}{a}.{t}" for a in ("merger.ln_q", "merger.mlp.0", "merger.mlp.2")
                    for t in ("weight", "bias") if f"{a}.{t}" not in src]
    unexpected = sorted(prefix + k for k in set(src) - used
                        if not k.endswith(("position_ids", "rotary_pos_emb.inv_freq")))
    if missing or unexpected:
        raise ValueError(f"{layout} checkpoint does not fit: missing keys {missing[:12]}"
                         f"{f' (+{len(missing) - 12} more)' if len(missing) > 12 else ''}; unexpected keys "
                         f"{unexpected[:12]}{f' (+{len(unexpected) - 12} more)' if len(unexpected) > 12 else ''}")
    return vit, merger


def convert(state: dict[str, torch.Tensor], config: dict, layout: str | None = None
            ) -> tuple[CRoPEViT, PatchMerger | None]:
    """The authors' VFM (state dict in their layout + their config.json) as a CRoPEViT and, when the
    checkpoint has one, their merger as a PatchMerger. Their forward = merger(vision(images))."""
    found, prefix = detect_layout(state)
    if layout is not None and layout != found:
        raise ValueError(f"asked for layout {layout!r} but the keys are {found!r}")
    vc = _vision_config(config)
    ape = state.get(prefix + ("vision_model.embeddings.position_embedding.weight" if found == "comp-siglip"
                              else "embeddings.position_embeddings"))
    if ape is not None:  # the APE's grid decides the image size timm is built at, whatever config.json says
        rows = ape.shape[-2] - (found == "comp-dinov2")
        g = math.isqrt(rows)
        if g * g != rows:
            raise ValueError(f"{found}: the position embedding has {rows} patch rows, not a square grid")
        vc["image_size"] = g * int(vc["patch_size"])
    vit = build_timm_vit(found, vc)
    vit_state, merger_state = map_state_dict(found, state, prefix, len(vit.blocks))
    if found == "comp-siglip":  # no post-layernorm in their tower: keep timm's norm at identity, and skip it
        vit_state["norm.weight"], vit_state["norm.bias"] = torch.ones(vit.embed_dim), torch.zeros(vit.embed_dim)
    try:
        result = vit.load_state_dict(vit_state, strict=False)
    except RuntimeError as e:  # a shape that config.json does not describe
        raise ValueError(f"{found}: the checkpoint's tensors do not fit the architecture its config.json "
                         f"describes: {str(e).splitlines()[-1].strip()}") from None
    left = [k for k in result.missing_keys if k not in ("cls_token",)]
    if left or result.unexpected_keys:
        raise ValueError(f"{found}: the mapped weights do not fill the timm ViT: missing {left}, "
                         f"unexpected {result.unexpected_keys}")
    enc = CRoPEViT.from_timm(vit, rope=vc.get("use_rope") is not False, legacy_ape_order=True,
                             prefix_tokens="drop" if found == "comp-dinov2" else "keep",
                             final_norm=found != "comp-siglip")
    merger = None
    if merger_state:
        merge = int(vc.get("spatial_merge_size") or 2)
        llm_dim = merger_state["mlp.2.weight"].shape[0]
        merger = PatchMerger(enc.embed_dim, llm_dim, merge)
        merger.load_state_dict(merger_state)
    return enc, merger


def save(enc: CRoPEViT, merger: PatchMerger | None, out: str | Path) -> None:
    """minicomp's VFM folder, plus the merger beside it."""
    from safetensors.torch import save_file

    out = Path(out)
    enc.save_pretrained(out)
    if merger is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in merger.state_dict().items()}, out / MERGER_WEIGHTS)
        (out / MERGER_CONFIG).write_text(json.dumps({"vision_dim": merger.vision_dim, "llm_dim": merger.llm_dim,
                                                      "merge": merger.merge}) + "\n")


def load_merger(folder: str | Path) -> PatchMerger | None:
    """The merger saved beside a converted VFM, or None."""
    folder = Path(folder)
    if not (folder / MERGER_WEIGHTS).is_file():
        return None
    from safetensors.torch import load_file

    cfg = json.loads((folder / MERGER_CONFIG).read_text())
    merger = PatchMerger(cfg["vision_dim"], cfg["llm_dim"], cfg["merge"])
    merger.load_state_dict(load_file(folder / MERGER_WEIGHTS))
    return merger
