"""One `Sample` -> one model-ready example: the image sized (native budget or fixed square) and
normalised with the VFM's mean/std, the conversation tokenised with its image tokens expanded,
and the alignment text: the caption, or (the authors' choice) the answers shuffled and joined
with spaces, shuffled by a generator seeded with the sample's id so that a resumed run sees
the same text."""
from __future__ import annotations

import random
from dataclasses import dataclass

from .resize import budget_size, resize_fixed, resize_to_budget, to_tensor
from .synthetic import Sample
from .tokenize import LLAVA, ImageText, encode_alignment_text, encode_conversation

ALIGN_TEXTS = ("caption", "shuffled_answers")


@dataclass
class Processor:
    """Settings that turn samples into examples. `fixed_size` set: square resize (Stage I,
    Stage II-fixed); None: native resolution within [min_tokens, max_tokens] merged tokens."""
    tokenizer: object
    patch: int
    merge: int = 2
    fixed_size: int | None = None
    min_tokens: int = 4
    max_tokens: int = 3000
    max_length: int | None = None
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)
    align_text: str = "caption"
    image: ImageText = LLAVA  # how an image is written in the text

    def __post_init__(self):
        if self.align_text not in ALIGN_TEXTS:
            raise ValueError(f"align_text={self.align_text!r}, expected one of {ALIGN_TEXTS}")
        if self.fixed_size is not None and self.fixed_size % (self.patch * self.merge):
            raise ValueError(f"fixed_size={self.fixed_size} must be a multiple of patch × merge = "
                             f"{self.patch * self.merge}")

    def __call__(self, sample: Sample) -> dict:
        """-> {"pixels": (3, H, W) or None, "input_ids", "labels", "align_ids", "id"}."""
        pixels, n_tokens = None, 0
        if sample.image is not None:
            img = (resize_fixed(sample.image, self.fixed_size) if self.fixed_size else
                   resize_to_budget(sample.image, self.patch, self.merge, self.min_tokens, self.max_tokens))
            pixels = to_tensor(img, self.mean, self.std)
            f = self.patch * self.merge
            n_tokens = (img.height // f) * (img.width // f)  # tokens after the 2×2 merger
        enc = encode_conversation(self.tokenizer, sample.conversations, n_tokens, self.max_length, self.image)
        return {"pixels": pixels, **enc, "align_ids": encode_alignment_text(self.tokenizer, self.alignment_text(sample),
                                                                              self.max_length),
                "id": sample.meta.get("id")}


    def alignment_text(self, sample: Sample) -> str:
        """The text F_t is computed from (Eq. 7)."""
        if self.align_text == "caption":
            return sample.caption
        answers = [t["value"] for t in sample.conversations if t["from"] == "gpt"]
        random.Random(str(sample.meta.get("id"))).shuffle(answers)  # the authors shuffle too; seeded: resume is exact
        return " ".join(answers)


def merged_tokens(height: int, width: int, patch: int, merge: int = 2, **budget) -> int:
    """How many visual tokens reach the LLM for an image of this size at native resolution."""
    H, W = budget_size(height, width, patch, merge, **budget)
    return (H // (patch * merge)) * (W // (patch * merge))
