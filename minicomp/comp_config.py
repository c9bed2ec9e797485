"""CoMPConfig: every setting of a CoMPModel, checked when it is made (saved as comp_config.json)."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

from .align import MODES, VARIANTS
from .data.processor import ALIGN_TEXTS
from .data.tokenize import ImageText
from .positions import RULES

# W of Eq. 8. The paper says word embeddings; the authors' code scores against lm_head.weight. The
# two are one matrix in a tied LLM (Qwen2.5-0.5B), two in an untied one (Qwen2.5-7B).
PROTOTYPES = ("output", "input")


@dataclass
class CoMPConfig:
    """Every setting of a CoMPModel. `vision`: a timm name, "hf-hub:…", or a local folder;
    `llm`: a Hugging Face id or a local folder."""
    vision: str = "vit_so400m_patch14_siglip_384"
    llm: str = "Qwen/Qwen2.5-0.5B"
    # vision encoder (C-RoPE, chapters 01–03)
    rope: bool = True
    rope_theta: float = 10000.0
    prefix_tokens: str = "keep"
    ape: bool = True  # False: the learned APE removed, RoPE-2D alone (paper Tab. 5a)
    ape_mode: str = "bicubic"
    legacy_ape_order: bool = False
    attn_backend: str = "auto"
    # merger (Eq. 5)
    merge: int = 2
    # alignment loss (Eq. 7–11, chapter 04)
    align: bool = True
    alpha: float = 0.05
    eps: float = 0.005
    temp: float = 0.005
    n_iters: int = 3
    sinkhorn_mode: str = "balanced"
    variant: str = "sinkhorn"
    align_text: str = "caption"  # the text of F_t: "caption" (the sample's caption) or "shuffled_answers" (the authors')
    prototypes: str = "output"  # W of Eq. 8: "output" (lm_head, as the authors' code) or "input" (the paper's word embeddings)
    # LLM input without padding (minicomp.seqpack): the same losses, fewer token slots
    pack_sequences: bool = True
    # the LLM's id of the image placeholder; None: the tokenizer's id of `image_token` (added if missing)
    image_token_id: int | None = None
    # how an image is written in the text (data.ImageText) and where its tokens sit (minicomp.positions):
    # LLaVA's "<image>\n" and 1-D positions by default; the authors' CoMP-MM: Qwen2-VL's
    # "<|vision_start|>" + "<|image_pad|>"… + "<|vision_end|>" and M-RoPE ("mrope")
    image_token: str = "<image>"
    image_prefix: str = ""
    image_suffix: str = "\n"
    positions: str = "1d"

    def __post_init__(self):
        for key, low, open_ in (("alpha", 0.0, False), ("eps", 0.0, True), ("temp", 0.0, True), ("rope_theta", 0.0, True)):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < low \
                    or (open_ and v == low):
                raise ValueError(f"model.{key}: expected a finite number {'>' if open_ else '>='} {low:g}, got {v!r}")
        for key in ("n_iters", "merge"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"model.{key}: expected an integer >= 1, got {v!r}")
        if self.sinkhorn_mode not in MODES:
            raise ValueError(f"sinkhorn_mode={self.sinkhorn_mode!r}, expected one of {MODES}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant={self.variant!r}, expected one of {VARIANTS}")
        if self.align_text not in ALIGN_TEXTS:
            raise ValueError(f"model.align_text={self.align_text!r}, expected one of {ALIGN_TEXTS}")
        if self.positions not in RULES:
            raise ValueError(f"model.positions={self.positions!r}, expected one of {RULES}")
        if not self.image_token:
            raise ValueError("model.image_token: expected the placeholder token's text, got an empty string")
        if self.prototypes not in PROTOTYPES:
            raise ValueError(f"model.prototypes={self.prototypes!r}, expected one of {PROTOTYPES}")

    @property
    def image_text(self) -> ImageText:
        return ImageText(self.image_token, self.image_prefix, self.image_suffix)

    @classmethod
    def from_dict(cls, d: dict) -> "CoMPConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown CoMPConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)
