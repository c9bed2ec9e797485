"""CoMPModel: C-RoPE vision encoder -> 2×2 patch merger -> any `transformers` causal LM, trained
with the text decoding loss plus α × the alignment loss (paper Eq. 5–11).

The LLM is used as is (no subclass, no copied code): its input embeddings receive the merger's
outputs at the `<image>` positions, its decoder (`llm.base_model`) gives the hidden states and
its output embedding (`lm_head`) is applied only where a label is supervised.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from .align import alignment_loss, masked_mean, pool_packed, word_prior
from .comp_config import CoMPConfig
from .convert import load_merger
from .data.collate import Batch
from .data.processor import Processor
from .data.resize import resize_fixed, resize_to_budget, to_tensor
from .data.tokenize import IGNORE, encode_prompt
from .known_llms import IMAGE_TOKEN_IDS, llm_config
from .progress import no_progress_bars, small_local_model
from .merger import PatchMerger
from .packed import Packed
from .positions import check_rule, generation_inputs, position_ids
from .seqpack import RowPacking
from .toy.tokenizer import CHAT_TEMPLATE
from .vision import CRoPEViT
from .xent import chunked_cross_entropy

log = logging.getLogger(__name__)
CONFIG_FILE = "comp_config.json"
@dataclass
class CoMPOutput:
    loss: torch.Tensor  # loss_dec + α·loss_align (Eq. 11)
    loss_dec: torch.Tensor  # Eq. 6
    loss_align: torch.Tensor  # Eq. 10, 0 when off or when the batch has no image
    n_supervised: int  # tokens in loss_dec


def _load_vision(spec: str, pretrained: bool, cfg: CoMPConfig) -> CRoPEViT:
    kw = dict(rope=cfg.rope, rope_theta=cfg.rope_theta, prefix_tokens=cfg.prefix_tokens, ape_mode=cfg.ape_mode,
              legacy_ape_order=cfg.legacy_ape_order, attn_backend=cfg.attn_backend, ape=cfg.ape)
    if Path(spec).is_dir():
        saved = Path(spec) / "crope.json"
        saved = json.loads(saved.read_text()) if saved.is_file() else {}
        kw["final_norm"] = saved.get("final_norm", True)  # a property of the weights (minicomp convert)
        if saved and saved.get("legacy_ape_order", False) != cfg.legacy_ape_order:
            log.warning("vision folder %s was saved with legacy_ape_order=%s but model.legacy_ape_order=%s; set "
                        "model.legacy_ape_order to match how its weights were trained", spec,
                        saved.get("legacy_ape_order"), cfg.legacy_ape_order)
        spec = f"local-dir:{spec}"
        pretrained = True  # a folder is its weights
    vit = timm.create_model(spec, pretrained=pretrained, num_classes=0)
    return CRoPEViT.from_timm(vit, **kw)


def load_llm(path: str | os.PathLike) -> nn.Module:
    """A causal LM from a folder or id, fp32: `AutoModelForCausalLM`, or for a vision-language family
    whose decoder transformers builds only with its head for images (Qwen2-VL: M-RoPE),
    `AutoModelForImageTextToText` (its own vision tower is never called)."""
    auto = AutoModelForCausalLM if type(AutoConfig.from_pretrained(path)) in MODEL_FOR_CAUSAL_LM_MAPPING \
        else AutoModelForImageTextToText
    with no_progress_bars(small_local_model(path)):
        return auto.from_pretrained(path, dtype=torch.float32)


def llm_width(llm: nn.Module) -> int:
    return llm.get_input_embeddings().embedding_dim


def _prepare_tokenizer(tokenizer, llm: nn.Module, image_token: str):
    """Add the image placeholder (and a pad token) where missing; grow the LLM's embeddings if needed."""
    if image_token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [image_token]})
        log.info("added %s to the tokenizer", image_token)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        log.warning("the tokenizer has no chat template: using ChatML")
        tokenizer.chat_template = CHAT_TEMPLATE
    if len(tokenizer) > llm.get_input_embeddings().num_embeddings:
        llm.resize_token_embeddings(len(tokenizer))


class CoMPModel(nn.Module):
    """Vision encoder + merger + causal LM. Build with `from_pretrained`, `from_preset` or from parts."""

    def __init__(self, vision: CRoPEViT, llm: nn.Module, tokenizer=None, config: CoMPConfig | None = None,
                 merger: PatchMerger | None = None):
        super().__init__()
        self.config = config or CoMPConfig()
        if "inputs_embeds" not in inspect.signature(llm.forward).parameters:
            raise ValueError(f"{type(llm).__name__}.forward does not accept inputs_embeds; CoMP needs a causal "
                             f"LM that does (Qwen2, Llama, SmolLM, …)")
        for attr in ("logit_scale", "logits_scaling"):
            if getattr(llm.config, attr, None) not in (None, 1, 1.0):
                raise ValueError(f"{type(llm).__name__} scales its logits ({attr}); not supported")
        self.vision, self.llm, self.tokenizer = vision, llm, tokenizer
        if tokenizer is not None:
            _prepare_tokenizer(tokenizer, llm, self.config.image_token)
            self.config.image_token_id = tokenizer.convert_tokens_to_ids(self.config.image_token)
        if self.config.image_token_id is None:
            raise ValueError("no tokenizer and no config.image_token_id: the image placeholder id is unknown")
        check_rule(self.config.positions, llm, self.config.merge)
        self.merger = merger or PatchMerger(vision.embed_dim, llm_width(llm), self.config.merge)
        if (self.merger.vision_dim, self.merger.llm_dim) != (vision.embed_dim, llm_width(llm)):
            raise ValueError(f"merger maps {self.merger.vision_dim} -> {self.merger.llm_dim}, but the vision width "
                             f"is {vision.embed_dim} and the LLM width {llm_width(llm)}")
        self.register_buffer("word_prior", None)  # (K,) the prototype marginal u_W of Eq. 9; None: uniform
        self.uniform_calls = False  # set by minicomp.shard: every rank calls the same sharded modules (FSDP2)
        self.prototypes = None  # the "learnable" variant's own prototypes (Tab. 5b)
        if self.config.variant == "learnable":
            self.prototypes = nn.Parameter(self.word_embeddings().detach().clone())

    # ---- construction -----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, *, vision: str | None = None,
                        llm: str | None = None, pretrained: bool = True, **config) -> "CoMPModel":
        """A saved CoMPModel folder (`path`), or a new model from parts: `vision` (timm name,
        "hf-hub:…" or folder) and `llm` (HF id or folder). pretrained=False: random weights,
        the LLM built from its config (known ids need no download). kwargs: CoMPConfig fields."""
        if path is not None:
            return cls._load(Path(path), **config)
        cfg = CoMPConfig.from_dict({**config, **{k: v for k, v in (("vision", vision), ("llm", llm)) if v}})
        enc = _load_vision(cfg.vision, pretrained, cfg)
        if pretrained:
            lm = load_llm(cfg.llm)
        else:
            lm = AutoModelForCausalLM.from_config(llm_config(cfg.llm))
        has_tok = pretrained or (Path(cfg.llm) / "tokenizer_config.json").is_file()
        tok = AutoTokenizer.from_pretrained(cfg.llm) if has_tok else None
        if tok is None and cfg.image_token_id is None:
            cfg.image_token_id = IMAGE_TOKEN_IDS.get(cfg.llm)
        merger = load_merger(cfg.vision) if Path(cfg.vision).is_dir() else None  # `minicomp convert` saves theirs
        if merger is not None and (merger.llm_dim, merger.merge) != (llm_width(lm), cfg.merge):
            log.warning("the merger beside %s maps to width %d (merge %d), not this LLM's %d (merge %d): a new "
                        "merger is used", cfg.vision, merger.llm_dim, merger.merge, llm_width(lm), cfg.merge)
            merger = None
        return cls(enc, lm, tok, cfg, merger)

    @classmethod
    def from_preset(cls, name: str, **config) -> "CoMPModel":
        """Named models. "tiny": the toy world's vision-only VFM + toy LLM (shipped, no download)."""
        from .toy import TOY_LLM_PATH, TOY_VFM_PATHS

        presets = {"tiny": dict(vision=str(TOY_VFM_PATHS["vision"]), llm=str(TOY_LLM_PATH)),
                   "tiny-siglip": dict(vision=str(TOY_VFM_PATHS["siglip"]), llm=str(TOY_LLM_PATH))}
        if name not in presets:
            raise ValueError(f"preset {name!r}, expected one of {sorted(presets)}")
        return cls.from_pretrained(**{**presets[name], **config})

    # ---- inputs -----------------------------------------------------------------------------
    def processor(self, fixed_size: int | None = None, min_tokens: int = 4, max_tokens: int = 3000,
                  max_length: int | None = None) -> Processor:
        """A data.Processor that matches this model: patch, merge, mean/std, tokenizer."""
        cfg = self.vision.pretrained_cfg
        return Processor(self.tokenizer, patch=self.vision.patch_size, merge=self.config.merge,
                         fixed_size=fixed_size, min_tokens=min_tokens, max_tokens=max_tokens, max_length=max_length,
                         mean=tuple(cfg.get("mean", (0.5,) * 3)), std=tuple(cfg.get("std", (0.5,) * 3)),
                         align_text=self.config.align_text, image=self.config.image_text)

    def encode_images(self, images: list[torch.Tensor]) -> Packed:
        """list of (3, H_i, W_i) -> merged visual tokens in the LLM's width, `Packed` (grids halved)."""
        return self.merger(self.vision(images))

    def embed(self, input_ids: torch.Tensor, images: list[torch.Tensor], image_index: torch.Tensor,
              ids: list | None = None) -> tuple[torch.Tensor, Packed | None]:
        """Input embeddings (B, L, D) with the merged visual tokens at the image positions, in order."""
        embeds = self.llm.get_input_embeddings()(input_ids)  # (B, L, D)
        is_img = input_ids == self.config.image_token_id  # (B, L)
        have = is_img.sum(1)  # (B,)
        want = torch.zeros_like(have)
        merged = None
        if len(images):
            if (image_index.diff() < 0).any():
                raise ValueError("image_index must be non-decreasing: images in the order of their samples")
            merged = self.encode_images(images)
            want.index_add_(0, image_index.to(want.device), torch.tensor(merged.lengths, device=want.device))
        bad = (have != want).nonzero().view(-1).tolist()
        if bad:
            i = bad[0]
            name = ids[i] if ids is not None else i
            raise ValueError(f"sample {name!r}: {int(have[i])} image placeholder tokens but its image(s) give "
                             f"{int(want[i])} visual tokens ({len(bad)} sample(s) mismatched)")
        if merged is not None:
            embeds = embeds.masked_scatter(is_img[..., None], merged.tokens.to(embeds.dtype))  # row-major fill
        return embeds, merged

    # ---- losses -----------------------------------------------------------------------------
    def decoding_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Eq. 6: next-token cross-entropy over supervised positions; logits only there, a chunk at a time."""
        target = labels[:, 1:]  # (B, L-1): position t predicts token t+1
        sel = target != IGNORE
        n = int(sel.sum())
        if n == 0:
            return hidden.sum() * 0.0, 0
        head = self.llm.get_output_embeddings()
        cap = getattr(self.llm.config, "final_logit_softcapping", None)
        # (n, V) logits a chunk of rows at a time (minicomp.xent): at 32K tokens × 151,936 words they are 20 GB
        return chunked_cross_entropy(hidden[:, :-1][sel], head.weight, target[sel], head.bias, cap), n

    def decoder(self, mask: torch.Tensor, position_ids: torch.Tensor | None = None, **inputs
                ) -> tuple[torch.Tensor, RowPacking | None]:
        """The LLM's decoder (`llm.base_model`) on right-padded rows: `input_ids` or `inputs_embeds`
        (B, L, …) and their mask (B, L). With config.pack_sequences, and when it saves rows, the
        sequences are repacked without padding (minicomp.seqpack): hidden states (R, Lp, D) and the
        RowPacking; else (B, L, D) and None. Under flash-attention-2 everything goes in one row
        (its varlen kernel); under SDPA or eager, rows stay at most L long (a dense mask costs Lp²).
        position_ids: None (the LLM counts) or (3, B, L) M-RoPE positions (minicomp.positions)."""
        if self.config.pack_sequences:
            one_row = getattr(self.llm.config, "_attn_implementation", None) == "flash_attention_2"
            rows = RowPacking.from_mask(mask, capacity=int(mask.sum()) if one_row else None)
            if rows.src.shape[0] < mask.shape[0]:
                packed = {k: rows.pack(v) for k, v in inputs.items()}  # (R, Lp, …)
                pos = rows.position_ids  # (R, Lp): each sequence from 0, which marks where it starts
                if position_ids is not None:  # (3, B, L) -> (3, R, Lp), after the sequence starts: (4, R, Lp)
                    pos = torch.cat([pos[None], rows.pack(position_ids.permute(1, 2, 0)).permute(2, 0, 1)])
                return self.llm.base_model(**packed, position_ids=pos, use_cache=False).last_hidden_state, rows
        extra = {} if position_ids is None else {"position_ids": position_ids}
        return self.llm.base_model(**inputs, attention_mask=mask, use_cache=False, **extra).last_hidden_state, None

    def text_features(self, align_ids: torch.Tensor, align_mask: torch.Tensor) -> torch.Tensor:
        """F_t of Eq. 7: the LLM's last hidden states of the caption alone, mean-pooled, no gradient."""
        with torch.no_grad():
            h, rows = self.decoder(align_mask, input_ids=align_ids)  # (n, La, D) or packed
            if rows is None:
                return masked_mean(h, align_mask.bool())  # (n, D)
            if (align_mask.sum(1) == 0).any():
                raise ValueError(f"sample(s) {(align_mask.sum(1) == 0).nonzero().view(-1).tolist()} have no text "
                                 f"tokens to pool")
            return rows.mean_per_sequence(h, len(align_ids))  # (n, D)

    def word_embeddings(self) -> torch.Tensor:
        """(K, D) the prototypes W of Eq. 8, as `config.prototypes` chooses (normalised and detached
        in `alignment_loss`)."""
        if self.config.prototypes == "output":
            return self.llm.get_output_embeddings().weight
        return self.llm.get_input_embeddings().weight

    def align_loss(self, merged: Packed, batch: Batch) -> torch.Tensor:
        """Eq. 7–10 for the samples that have an image: F_v from the merger, F_t from the LLM."""
        c = self.config
        idx = batch.image_index.to(batch.align_ids.device)
        if idx.unique().numel() != len(idx):
            raise ValueError("the alignment loss pairs one image with one caption; a sample has several images")
        f_v = pool_packed(merged)  # (n_img, D)
        f_t = self.text_features(batch.align_ids[idx], batch.align_mask[idx])  # (n_img, D)
        protos = self.prototypes if self.prototypes is not None else self.word_embeddings()
        return alignment_loss(f_v, f_t, protos, self.word_prior, c.eps, c.temp, c.n_iters, c.sinkhorn_mode, c.variant)

    def forward(self, batch: Batch) -> CoMPOutput:
        """Both losses on a `data.Batch` (images and text-only samples may be mixed)."""
        if batch.input_ids.numel() == 0:
            raise ValueError("empty batch: no samples or no tokens")
        embeds, merged = self.embed(batch.input_ids, batch.images, batch.image_index, batch.ids)
        blank = self._blank_image(embeds.device) if self.uniform_calls and merged is None else None
        pos = self.position_ids(batch.input_ids, batch.attention_mask, merged)
        hidden, rows = self.decoder(batch.attention_mask, pos, inputs_embeds=embeds)  # (B, L, D) or (R, Lp, D)
        loss_dec, n = self.decoding_loss(hidden, batch.labels if rows is None else rows.labels(batch.labels, IGNORE))
        if self.config.align and merged is not None:
            loss_align = self.align_loss(merged, batch)
        else:
            loss_align = loss_dec.new_zeros(())
        loss = loss_dec + self.config.alpha * loss_align
        if blank is not None:  # weighted 0: the same calls as on the ranks with images, no number changed
            extra = blank.tokens.sum()
            if self.config.align:
                extra = extra + self.align_loss(blank, dataclasses.replace(batch, image_index=torch.zeros(1).long()))
            loss = loss + 0.0 * extra.nan_to_num(0.0, 0.0, 0.0)
        return CoMPOutput(loss, loss_dec, loss_align, n)

    def _blank_image(self, device: torch.device) -> Packed:
        """A text-only batch under FSDP2: the image path runs on one blank image, at the point where
        the ranks with images run it, so that every rank gathers and reduces the same shards in the
        same order (else the collectives mismatch and the job aborts or hangs)."""
        f = self.vision.patch_size * self.config.merge
        return self.encode_images([torch.zeros(3, f, f, device=device)])  # one merged token

    def position_ids(self, input_ids: torch.Tensor, mask: torch.Tensor, merged: Packed | None) -> torch.Tensor | None:
        """The rule of `config.positions` (minicomp.positions): None, or (3, B, L) M-RoPE positions."""
        c = self.config
        return position_ids(c.positions, self.llm, input_ids, mask, c.image_token_id,
                            None if merged is None else merged.grid_hw, c.merge)

    def set_word_prior(self, counts: torch.Tensor, rule: str = "frequency") -> None:
        """Set u_W (Eq. 9) from token counts (K,) of the Stage-II captions (`minicomp prior`)."""
        K = self.llm.get_input_embeddings().num_embeddings
        if counts.shape[0] < K:  # tokens added after counting (e.g. <image>) were never seen
            counts = torch.cat([counts, counts.new_zeros(K - counts.shape[0])])
        if counts.shape != (K,):
            raise ValueError(f"counts has shape {tuple(counts.shape)}, expected ({K},) for this LLM's vocabulary")
        self.word_prior = word_prior(counts, rule).to(self.llm.get_input_embeddings().weight.device)

    # ---- generation -------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, images: list, prompts: list[str], fixed_size: int | None = None, max_tokens: int = 3000,
                 **gen_kwargs) -> list[str]:
        """Answer each prompt about its image (PIL image or None) with transformers' generation
        (KV cache). Greedy by default; gen_kwargs go to `llm.generate`."""
        if self.tokenizer is None:
            raise ValueError("generate needs a tokenizer")
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
        cfg, p, f = self.vision.pretrained_cfg, self.vision.patch_size, self.vision.patch_size * self.config.merge
        device = next(self.parameters()).device
        pixels, rows = [], []
        for img, prompt in zip(images, prompts):
            n = 0
            if img is not None:
                img = resize_fixed(img, fixed_size) if fixed_size else resize_to_budget(img, p, self.config.merge,
                                                                                         4, max_tokens)
                pixels.append(to_tensor(img, cfg["mean"], cfg["std"]).to(device))
                n = (img.height // f) * (img.width // f)
            rows.append(encode_prompt(self.tokenizer, prompt, n, self.config.image_text))
        L = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (L - len(r)) + r for r in rows], device=device)  # (B, L), left-padded
        mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows], device=device)
        index = torch.tensor([i for i, img in enumerate(images) if img is not None], device=device, dtype=torch.long)
        embeds, merged = self.embed(ids, pixels, index)
        where = generation_inputs(self.config.positions, ids, self.config.image_token_id,
                                  None if merged is None else merged.grid_hw, self.config.merge)
        stop = [t for t in {self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids("<|im_end|>")}
                if isinstance(t, int) and t >= 0 and t != self.tokenizer.unk_token_id]
        kw = dict(max_new_tokens=32, do_sample=False, eos_token_id=stop, pad_token_id=pad)
        out = self.llm.generate(inputs_embeds=embeds, attention_mask=mask, **where, **{**kw, **gen_kwargs})
        out = out[:, L:] if "input_ids" in where else out  # the new tokens (given the prompt's ids, it comes back too)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    # ---- saving -----------------------------------------------------------------------------
    def export_vision(self, path: str | os.PathLike) -> None:
        """The CoMP-trained VFM alone: a timm folder plus C-RoPE settings (`CRoPEViT.from_pretrained`;
        with rope=False also a plain timm model: ``timm.create_model("local-dir:<path>", pretrained=True)``)."""
        self.vision.save_pretrained(path)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """vision/ (timm + crope.json), merger.safetensors, llm/ (HF model + tokenizer), comp_config.json;
        written to a temporary folder first and renamed, so a crash never leaves half a model."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            self.vision.save_pretrained(tmp / "vision")
            save_file({k: v.detach().cpu().contiguous() for k, v in self.merger.state_dict().items()},
                      tmp / "merger.safetensors")
            extra = {k: v.detach().cpu().contiguous() for k, v in (("word_prior", self.word_prior),
                                                                    ("prototypes", self.prototypes)) if v is not None}
            if extra:
                save_file(extra, tmp / "extra.safetensors")
            with no_progress_bars(sum(p.numel() for p in self.llm.parameters()) < 10_000_000):
                self.llm.save_pretrained(tmp / "llm")
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp / "llm")
            (tmp / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
            old = path.with_name(path.name + ".old")
            if path.exists():
                path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def _load(cls, path: Path, **overrides) -> "CoMPModel":
        if not (path / CONFIG_FILE).is_file():
            hint = (f"; for the authors' CoMP-MM checkpoints: minicomp convert {path} OUT --vision-config VFM, or "
                    f"minicomp.convert_mm.convert_comp_mm") if (path / "config.json").is_file() else ""
            raise FileNotFoundError(f"{path}: no {CONFIG_FILE}; not a folder written by CoMPModel.save_pretrained{hint}")
        cfg = CoMPConfig.from_dict({**json.loads((path / CONFIG_FILE).read_text()), **overrides})
        enc = CRoPEViT.from_pretrained(path / "vision", attn_backend=cfg.attn_backend)
        lm = load_llm(path / "llm")
        tok = AutoTokenizer.from_pretrained(path / "llm") if (path / "llm" / "tokenizer_config.json").is_file() else None
        merger = PatchMerger(enc.embed_dim, llm_width(lm), cfg.merge)
        merger.load_state_dict(load_file(path / "merger.safetensors"))
        model = cls(enc, lm, tok, cfg, merger)
        if (path / "extra.safetensors").is_file():
            extra = load_file(path / "extra.safetensors")
            if "word_prior" in extra:
                model.word_prior = extra["word_prior"]
            if "prototypes" in extra and model.prototypes is not None:
                model.prototypes.data.copy_(extra["prototypes"])
        return model
