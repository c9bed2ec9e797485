"""The authors' CoMP-MM models (github SliMM-X/CoMP-MM) as a CoMPModel, for inference or more training.

A CoMP-MM checkpoint folder holds one state dict and a config.json:
- `model.*`: a Qwen2 decoder (embed_tokens, layers, norm) that the authors run with Qwen2-VL's
  3-D rotary positions (M-RoPE, `rope_scaling.mrope_section`); `lm_head.weight`, absent when tied;
- `visual.vision_model.*` (CoMP-SigLIP) or `visual.embeddings.*`/`visual.encoder.*` (CoMP-DINOv2),
  and `visual.merger.*`: the VFM and merger, mapped by `minicomp.convert`;
- config.json: Qwen2's fields plus the vision special-token ids (`vision_start_token_id`,
  `image_token_id`, `vision_end_token_id`) and `custom_visual_model`, the hub id of the VFM whose
  config.json describes the vision architecture. That file is not in the folder: pass it as
  `vision_config` (its folder, or the dict).

The result is a configuration of minicomp's usual parts, not a special model: the LLM is
transformers' Qwen2-VL decoder (`Qwen2VLForConditionalGeneration`, its own vision tower of depth 0
never called), positions follow the "mrope" rule (minicomp.positions), and an image is written
`<|vision_start|>` + `<|image_pad|>` × n + `<|vision_end|>` before the question (data.ImageText).
Their vocabulary (151,657 for the Qwen2-VL tokenizer) is kept as it is.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn as nn
from transformers import AutoTokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration

from .comp_config import CoMPConfig
from .convert import convert, read_checkpoint
from .model import CoMPModel

log = logging.getLogger(__name__)
# config.json fields of their Qwen2 decoder, carried into Qwen2-VL's text config
_TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta",
              "attention_dropout", "tie_word_embeddings", "bos_token_id", "eos_token_id")
_MARKERS = {"vision_start_token_id": "<|vision_start|>", "image_token_id": "<|image_pad|>",
            "vision_end_token_id": "<|vision_end|>"}


def is_comp_mm(state: dict[str, torch.Tensor]) -> bool:
    """A whole CoMP-MM model (LLM and vision tower), not a VFM alone."""
    return "model.embed_tokens.weight" in state and any(k.startswith("visual.") for k in state)


def build_llm(config: dict, merge: int) -> nn.Module:
    """Their Qwen2 decoder as transformers' Qwen2-VL decoder with M-RoPE (random weights)."""
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads") if k not in config]
    section = (config.get("rope_scaling") or {}).get("mrope_section")
    if missing or section is None:
        raise ValueError(f"config.json is not a CoMP-MM LLM config: missing {missing + ([] if section else ['rope_scaling.mrope_section'])}")
    text = {"bos_token_id": None, "eos_token_id": None, **{k: config[k] for k in _TEXT_KEYS if k in config}}
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    if 2 * sum(section) != head_dim:
        raise ValueError(f"rope_scaling.mrope_section {section} covers {2 * sum(section)} of the head's {head_dim} dims")
    text["rope_scaling"] = {"rope_type": "default", "mrope_section": list(section)}
    ids = {k: config[k] for k in (*_MARKERS, "video_token_id") if k in config}
    vision = dict(depth=0, embed_dim=8, num_heads=1, hidden_size=config["hidden_size"], spatial_merge_size=merge)
    cfg = Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=config.get("tie_word_embeddings", False),
                        **ids)
    return Qwen2VLForConditionalGeneration(cfg)


def load_llm_weights(llm: nn.Module, state: dict[str, torch.Tensor], tied: bool) -> None:
    """`model.*` into the decoder, `lm_head.weight` into the head (or the tied embeddings). Keys of
    neither the LLM nor the vision tower are named in the error."""
    decoder = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    result = llm.model.language_model.load_state_dict(decoder, strict=False)
    unexpected = sorted(set(state) - {k for k in state if k.startswith(("model.", "visual.", "lm_head."))})
    missing = ["model." + k for k in result.missing_keys]
    if "lm_head.weight" in state:
        llm.lm_head.weight.data.copy_(state["lm_head.weight"])
        if tied and not torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"]):
            raise ValueError("config.json says tie_word_embeddings but lm_head.weight differs from "
                             "model.embed_tokens.weight")
    elif not tied:
        missing.append("lm_head.weight")
    if missing or result.unexpected_keys or unexpected:
        raise ValueError(f"CoMP-MM checkpoint does not fit its config.json: missing keys {missing[:12]}; unexpected "
                         f"keys {(['model.' + k for k in result.unexpected_keys] + unexpected)[:12]}")


def convert_comp_mm(folder: str | Path, vision_config: str | Path | dict | None = None) -> CoMPModel:
    """A released CoMP-MM folder -> CoMPModel (fp32). `vision_config`: the config.json of the VFM that
    their `custom_visual_model` names (its folder or the dict), unless the folder holds a
    `vision_config` of its own."""
    folder = Path(folder)
    state, config = read_checkpoint(folder)
    if not is_comp_mm(state):
        raise ValueError(f"{folder}: not a CoMP-MM model: expected model.embed_tokens.weight and visual.* keys; "
                         f"for a VFM alone use minicomp.convert.convert")
    if vision_config is None and "vision_config" not in config:
        name = config.get("custom_visual_model", "the VFM it was trained from")
        raise ValueError(f"{folder}/config.json does not describe the vision tower: pass vision_config, the "
                         f"config.json of {name} (its folder)")
    if isinstance(vision_config, (str, Path)):
        vision_config = json.loads((Path(vision_config) / "config.json").read_text())
    vc = dict(vision_config or config["vision_config"])
    vc["use_rope"] = True  # their vision RoPE is a constructor default, on whatever the config says
    merge = int(config.get("spatial_merge_size") or vc.get("spatial_merge_size") or 2)
    vc["spatial_merge_size"] = merge
    enc, merger = convert(state, vc)
    if merger is None:
        raise ValueError(f"{folder}: no visual.merger.* weights")
    pre = folder / "preprocessor_config.json"
    if pre.is_file():  # their image normalisation, not the VFM family's default
        p = json.loads(pre.read_text())
        norm = {k: tuple(p[f"image_{k}"]) for k in ("mean", "std") if f"image_{k}" in p}
        enc.pretrained_cfg.update(norm)
        enc.timm_model.pretrained_cfg = {**enc.timm_model.pretrained_cfg, **norm}  # saved with the weights
    else:
        log.warning("%s has no preprocessor_config.json: the VFM's own mean/std %s/%s are used", folder,
                    enc.pretrained_cfg.get("mean"), enc.pretrained_cfg.get("std"))
    tied = bool(config.get("tie_word_embeddings", False))
    llm = build_llm(config, merge)
    load_llm_weights(llm, state, tied)
    tok = AutoTokenizer.from_pretrained(folder) if (folder / "tokenizer_config.json").is_file() else None
    if tok is not None:
        absent = [t for t in _MARKERS.values() if t not in tok.get_vocab()]
        if absent:
            raise ValueError(f"{folder}: the tokenizer lacks Qwen2-VL's image tokens {absent}")
    elif "image_token_id" not in config:
        raise ValueError(f"{folder}: no tokenizer and no image_token_id in config.json")
    cfg = CoMPConfig(vision=str(folder), llm=str(folder), rope=True, legacy_ape_order=True,
                     prefix_tokens=enc.prefix_tokens, merge=merge, positions="mrope", prototypes="output",
                     image_token=_MARKERS["image_token_id"], image_prefix=_MARKERS["vision_start_token_id"],
                     image_suffix=_MARKERS["vision_end_token_id"], image_token_id=config.get("image_token_id"))
    return CoMPModel(enc, llm, tok, cfg, merger)
