"""Conversations to token ids through the tokenizer's own chat template (paper Eq. 6 inputs).

- each `<image>` placeholder becomes that image's merged-token count of image-token ids, written
  as an `ImageText` says (LLaVA's `<image>` and a newline by default; Qwen2-VL's
  `<|vision_start|><|image_pad|>…<|vision_end|>` for the authors' CoMP-MM models);
- only the assistant's answers (with their end-of-turn token and the newline the template puts
  after it) are supervised: other labels -100;
- truncation never cuts through the image tokens (such a sample raises `TooLong`);
- the caption, encoded alone without the image, is the alignment text (Eq. 7).
Works with any template that renders conversation prefixes as prefixes of the whole (ChatML,
Llama 3, …): assistant spans are found by rendering the conversation turn by turn.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

IGNORE = -100
ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class ImageText:
    """How an image is written in the text: its placeholder `token`, repeated once per merged
    visual token, with `prefix` before and `suffix` after (a data file's `<image>` and the newline
    that follows it are replaced by prefix + token + suffix)."""
    token: str = IMAGE_TOKEN
    prefix: str = ""
    suffix: str = "\n"

    def wrap(self, text: str) -> str:
        """A turn's text with the data's `<image>` (and its newline) written this way."""
        if self == LLAVA:
            return text  # the data's own form
        return re.sub(re.escape(IMAGE_TOKEN) + r"\n?", lambda _: self.prefix + self.token + self.suffix, text)


LLAVA = ImageText()


class TooLong(ValueError):
    """The image tokens do not fit in max_length."""


def to_messages(conversations: list[dict], image: ImageText = LLAVA) -> list[dict]:
    """LLaVA turns ({"from", "value"}) -> chat messages ({"role", "content"})."""
    return [{"role": ROLES[t["from"]], "content": image.wrap(t["value"])} for t in conversations]


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of each assistant answer in it."""
    spans = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True) if k else \
            tokenizer.apply_chat_template([], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[:k + 1], tokenize=False)
        spans.append((len(before), len(upto)))
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    for s, e in spans:
        if e > len(text):
            raise ValueError("the chat template does not render prefixes as prefixes; cannot find answers")
    return text, spans


def encode_conversation(tokenizer, conversations: list[dict], n_image_tokens: int = 0,
                        max_length: int | None = None, image: ImageText = LLAVA) -> dict[str, list[int]]:
    """-> {"input_ids", "labels"}: image placeholder expanded, answers supervised, truncated safely."""
    text, spans = assistant_spans(tokenizer, to_messages(conversations, image))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    image_id = tokenizer.convert_tokens_to_ids(image.token)
    ids, labels = [], []
    for tid, (s, e) in zip(enc["input_ids"], enc["offset_mapping"]):
        if tid == image_id:
            ids += [image_id] * n_image_tokens
            labels += [IGNORE] * n_image_tokens
            continue
        ids.append(tid)
        labels.append(tid if any(a <= s and e <= b and e > s for a, b in spans) else IGNORE)
    n_placeholders = enc["input_ids"].count(image_id)
    if n_placeholders != (1 if n_image_tokens else 0):
        raise ValueError(f"{n_placeholders} {image.token} placeholders for {'one image' if n_image_tokens else 'no image'}")
    if max_length is not None and len(ids) > max_length:
        if n_image_tokens and max(i for i, t in enumerate(ids) if t == image_id) >= max_length:
            raise TooLong(f"{n_image_tokens} image tokens do not fit in max_length={max_length}")
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels}


def encode_alignment_text(tokenizer, caption: str, max_length: int | None = None) -> list[int]:
    """The caption alone, without the image or a template: the LLM input for F_t (Eq. 7)."""
    ids = tokenizer(caption, add_special_tokens=False)["input_ids"]
    return ids[:max_length] if max_length else ids


def encode_prompt(tokenizer, prompt: str, n_image_tokens: int = 0, image: ImageText = LLAVA) -> list[int]:
    """A user turn (the image in front when n_image_tokens > 0, written as `image` says) rendered
    with the generation prompt, placeholder expanded: the input of `CoMPModel.generate`."""
    content = (image.prefix + image.token + image.suffix + prompt) if n_image_tokens else prompt
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)
    image_id = tokenizer.convert_tokens_to_ids(image.token)
    ids = []
    for t in tokenizer(text, add_special_tokens=False)["input_ids"]:
        ids += [image_id] * n_image_tokens if t == image_id else [t]
    return ids
