"""A whole CoMP-MM model (their Qwen2 LLM with Qwen2-VL's M-RoPE, their image markers, their
vocabulary) loaded as a CoMPModel, against our own reference of their forward, written from their
code: slimm/model/slimm.py (the splice, get_rope_index) and the Qwen2 decoder with
apply_multimodal_rotary_pos_emb of the transformers they pinned."""
import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from test_convert import P, their_checkpoint, their_forward
from transformers import AutoTokenizer, LogitsProcessor, LogitsProcessorList

import minicomp as mc
from minicomp.cli import main as cli_main
from minicomp.convert_mm import convert_comp_mm
from minicomp.data import collate, encode_prompt
from minicomp.data.resize import resize_to_budget, to_tensor
from minicomp.toy import TOY_LLM_PATH

W, HEADS, KV, LAYERS, INTER, SECTION = 24, 4, 2, 2, 40, [1, 1, 1]  # head_dim 6 = 2 · sum(SECTION); W: the merger's output
MARKERS = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"]


def _tokenizer():
    tok = AutoTokenizer.from_pretrained(TOY_LLM_PATH)
    tok.add_special_tokens({"additional_special_tokens": MARKERS})
    return tok


def mm_checkpoint(folder, tok, seed=0, tied=True):
    """A random-weight CoMP-MM folder in their layout (model.*, visual.*, lm_head when untied) with
    their config.json fields, the tokenizer beside it; and the VFM's config folder."""
    vis, vcfg = their_checkpoint("comp-siglip", seed, prefix="visual.")
    vcfg = {k: v for k, v in vcfg.items() if k not in ("use_rope", "spatial_merge_size", "llm_hidden_size")}
    g = torch.Generator().manual_seed(seed + 1)
    r = lambda *shape, scale=0.2: torch.randn(*shape, generator=g) * scale
    V, hd = len(tok), W // HEADS
    s = dict(vis, **{"model.embed_tokens.weight": r(V, W, scale=1.0), "model.norm.weight": 1 + r(W)})
    for i in range(LAYERS):
        a = f"model.layers.{i}."
        for name, out in (("q_proj", HEADS * hd), ("k_proj", KV * hd), ("v_proj", KV * hd)):
            s[a + f"self_attn.{name}.weight"], s[a + f"self_attn.{name}.bias"] = r(out, W), r(out)
        s[a + "self_attn.o_proj.weight"] = r(W, HEADS * hd)
        s[a + "mlp.gate_proj.weight"], s[a + "mlp.up_proj.weight"], s[a + "mlp.down_proj.weight"] = \
            r(INTER, W), r(INTER, W), r(W, INTER)
        s[a + "input_layernorm.weight"], s[a + "post_attention_layernorm.weight"] = 1 + r(W), 1 + r(W)
    if not tied:
        s["lm_head.weight"] = r(V, W)
    ids = dict(zip(("vision_start_token_id", "image_token_id", "vision_end_token_id"), tok.convert_tokens_to_ids(MARKERS)))
    config = {"architectures": ["SliMMForConditionalGeneration"], "model_type": "qwen2", "vocab_size": V,
              "hidden_size": W, "intermediate_size": INTER, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
              "num_key_value_heads": KV, "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1e6,
              "max_position_embeddings": 4096, "tie_word_embeddings": tied, "use_mrope": True, "use_deepstack": False,
              "rope_scaling": {"type": "default", "mrope_section": SECTION, "rope_type": "default"},
              "custom_visual_model": "SliMM-X/CoMP-SigLIP-So400M", **ids}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(s, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config))
    tok.save_pretrained(folder)
    (folder / "vfm").mkdir()
    (folder / "vfm" / "config.json").write_text(json.dumps(vcfg))
    return s, config


# ---- our reference of their forward -------------------------------------------------------

def their_positions(ids, mask, grids, image_id):
    """slimm.py get_rope_index: text counts on all 3 axes; an image's tokens sit at (0, row, col)
    of its merged grid past the text before it; the text after resumes at the largest + 1. Pads: 1."""
    B, L = ids.shape
    pos, it = torch.ones(3, B, L, dtype=torch.long), iter(grids)
    for b in range(B):
        row, parts, k = ids[b][mask[b] == 1].tolist(), [], 0
        st = lambda: int(parts[-1].max()) + 1 if parts else 0
        while image_id in row[k:]:
            j = row.index(image_id, k)
            h, w = next(it)
            s0 = st()
            parts.append(torch.arange(j - k).expand(3, -1) + s0)
            grid = torch.stack([torch.zeros(h * w, dtype=torch.long), torch.arange(h).repeat_interleave(w),
                                torch.arange(w).repeat(h)])
            parts.append(grid + (j - k) + s0)
            k = j + h * w
        parts.append(torch.arange(len(row) - k).expand(3, -1) + st())
        pos[:, b, mask[b] == 1] = torch.cat(parts, 1)
    return pos


def _rotate_half(x):
    return torch.cat([-x[..., x.shape[-1] // 2:], x[..., : x.shape[-1] // 2]], -1)


def their_llm(s, embeds, pos, mask, tied=True):
    """The Qwen2 decoder with M-RoPE (4.47's apply_multimodal_rotary_pos_emb) -> logits (B, L, V)."""
    B, L, _ = embeds.shape
    hd = W // HEADS
    inv = 1.0 / (1e6 ** (torch.arange(0, hd, 2, dtype=torch.float) / hd))  # (hd/2,)
    f = pos[..., None].float() * inv  # (3, B, L, hd/2)
    emb = torch.cat([f, f], -1)  # (3, B, L, hd)
    emb = torch.cat([c[i % 3] for i, c in enumerate(emb.split(SECTION * 2, -1))], -1)  # (B, L, hd): chunk i from axis i%3
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]  # (B, 1, L, hd)
    rms = lambda x, n: s[n] * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    lin = lambda x, n, bias=True: F.linear(x, s[n + ".weight"], s.get(n + ".bias") if bias else None)
    allowed = torch.ones(L, L, dtype=torch.bool).tril()[None] & mask.bool()[:, None, :]  # (B, L, L)
    x = embeds
    for i in range(LAYERS):
        a = f"model.layers.{i}."
        h = rms(x, a + "input_layernorm.weight")
        q = lin(h, a + "self_attn.q_proj").view(B, L, HEADS, hd).transpose(1, 2)  # (B, H, L, hd)
        k = lin(h, a + "self_attn.k_proj").view(B, L, KV, hd).transpose(1, 2)
        v = lin(h, a + "self_attn.v_proj").view(B, L, KV, hd).transpose(1, 2)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        k, v = k.repeat_interleave(HEADS // KV, 1), v.repeat_interleave(HEADS // KV, 1)
        att = (q @ k.transpose(-1, -2) / hd ** 0.5).masked_fill(~allowed[:, None], float("-inf")).softmax(-1)
        x = x + lin((att @ v).transpose(1, 2).reshape(B, L, HEADS * hd), a + "self_attn.o_proj", bias=False)
        h = rms(x, a + "post_attention_layernorm.weight")
        x = x + lin(F.silu(lin(h, a + "mlp.gate_proj", False)) * lin(h, a + "mlp.up_proj", False), a + "mlp.down_proj", False)
    head = s["model.embed_tokens.weight"] if tied else s["lm_head.weight"]
    return rms(x, "model.norm.weight") @ head.T


def their_logits(s, ids, mask, images, image_id, tied=True):
    """slimm.py forward: the pad tokens' embeddings replaced by the merged tokens, in order."""
    vis = {k[len("visual."):]: v for k, v in s.items() if k.startswith("visual.")}
    merged, _ = their_forward(vis, "comp-siglip", images)
    embeds = s["model.embed_tokens.weight"][ids].clone()
    embeds[ids == image_id] = merged
    grids = [(img.shape[1] // P // 2, img.shape[2] // P // 2) for img in images]
    return their_llm(s, embeds, their_positions(ids, mask, grids, image_id), mask, tied), grids


# ---- tests ---------------------------------------------------------------------------------

def _batch(tok, images, image_id):
    """Samples: one image each (several aspect ratios) and one without, of different lengths."""
    vs, ve, ims, ime = tok.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>", "<|im_start|>", "<|im_end|>"])
    g = torch.Generator().manual_seed(3)
    exs = []
    for i, img in enumerate([*images, None]):
        n = 0 if img is None else (img.shape[1] // P // 2) * (img.shape[2] // P // 2)
        text = torch.randint(10, 400, (3 + 2 * i,), generator=g).tolist()
        ids = [ims, 11, 12] + ([vs] + [image_id] * n + [ve] if n else []) + text + [ime]
        labels = [-100] * (len(ids) - 4) + ids[-4:]
        exs.append({"pixels": img, "input_ids": ids, "labels": labels, "align_ids": text, "id": f"s{i}"})
    return collate(exs, tok.pad_token_id)


@pytest.mark.parametrize("tied", [True, False])
def test_comp_mm_logits_equal_their_forward(tmp_path, rand_images, tied):
    tok = _tokenizer()
    s, config = mm_checkpoint(tmp_path / "mm", tok, tied=tied)
    model = convert_comp_mm(tmp_path / "mm", tmp_path / "mm" / "vfm").eval()
    assert model.config.positions == "mrope" and model.config.image_token == "<|image_pad|>"
    assert model.llm.get_input_embeddings().num_embeddings == config["vocab_size"]  # their vocabulary, not grown
    image_id = config["image_token_id"]
    assert model.config.image_token_id == image_id
    images = rand_images([(16, 32), (24, 8), (8, 24)], seed=1)
    batch = _batch(tok, images, image_id)
    with torch.no_grad():
        ref, grids = their_logits(s, batch.input_ids, batch.attention_mask, images, image_id, tied)
        embeds, merged = model.embed(batch.input_ids, batch.images, batch.image_index)
        pos = model.position_ids(batch.input_ids, batch.attention_mask, merged)
        valid = batch.attention_mask.bool()
        assert torch.equal(pos[:, valid], their_positions(batch.input_ids, batch.attention_mask, grids, image_id)[:, valid])
        model.config.pack_sequences = False
        hidden, _ = model.decoder(batch.attention_mask, pos, inputs_embeds=embeds)
        logits = model.llm.get_output_embeddings()(hidden)
    torch.testing.assert_close(logits[valid], ref[valid], atol=1e-4, rtol=1e-4)
    # the loss through packed rows (4-row M-RoPE positions) equals the reference's
    model.config.pack_sequences, model.config.align = True, False
    with torch.no_grad():
        out = model(batch)
    target = batch.labels[:, 1:]
    want = F.cross_entropy(ref[:, :-1][target != -100], target[target != -100])
    torch.testing.assert_close(out.loss_dec, want, atol=1e-5, rtol=1e-5)


def test_mrope_is_not_1d_positions(tmp_path, rand_images):
    """The rule matters: with 1-D positions the same weights give other logits (the switch is live)."""
    tok = _tokenizer()
    mm_checkpoint(tmp_path / "mm", tok)
    model = convert_comp_mm(tmp_path / "mm", tmp_path / "mm" / "vfm").eval()
    images = rand_images([(16, 32)], seed=1)
    batch = _batch(tok, images, model.config.image_token_id)
    model.config.pack_sequences = False
    with torch.no_grad():
        embeds, merged = model.embed(batch.input_ids, batch.images, batch.image_index)
        mrope, _ = model.decoder(batch.attention_mask, model.position_ids(batch.input_ids, batch.attention_mask, merged),
                                 inputs_embeds=embeds)
        plain, _ = model.decoder(batch.attention_mask, inputs_embeds=embeds)
    row = batch.attention_mask[0].bool()
    assert (mrope[0, row] - plain[0, row]).abs().max() > 1e-3


def test_comp_mm_generates_their_greedy_answer_and_minicomp_ask_works(tmp_path, rand_images, capsys):
    """generate (left-padded, KV cache, the LLM's M-RoPE offsets) = greedy decoding with the
    reference forward recomputed on the whole sequence; the converted folder answers `minicomp ask`."""
    tok = _tokenizer()
    s, config = mm_checkpoint(tmp_path / "mm", tok)
    assert cli_main(["convert", str(tmp_path / "mm"), str(tmp_path / "out"), "--vision-config",
                     str(tmp_path / "mm" / "vfm")]) == 0
    model = mc.CoMPModel.from_pretrained(tmp_path / "out").eval()
    assert model.config.positions == "mrope"
    pics = [Image.fromarray((torch.rand(40, 24, 3, generator=torch.Generator().manual_seed(i)) * 255).byte().numpy())
            for i in range(2)]
    prompts, new = ["what is it", "and the colour of the thing"], 3
    steps = []  # the logits of every decoding step, (B, V) each: they pin the cached steps' positions too

    class Record(LogitsProcessor):
        def __call__(self, input_ids, scores):
            steps.append(scores.detach().clone())
            return scores

    answers = model.generate(pics, prompts, max_tokens=12, max_new_tokens=new, min_new_tokens=new,
                             logits_processor=LogitsProcessorList([Record()]))
    assert len(steps) == new
    cfg, image_id = model.vision.pretrained_cfg, config["image_token_id"]
    for b, (pic, prompt, answer) in enumerate(zip(pics, prompts, answers)):
        img = resize_to_budget(pic, P, 2, 4, 12)
        x = to_tensor(img, cfg["mean"], cfg["std"])
        ids = encode_prompt(tok, prompt, (img.height // (2 * P)) * (img.width // (2 * P)), model.config.image_text)
        assert tok.convert_tokens_to_ids("<|vision_start|>") in ids and tok.convert_tokens_to_ids("<|vision_end|>") in ids
        for k in range(new):
            t = torch.tensor([ids])
            logits, _ = their_logits(s, t, torch.ones_like(t), [x], image_id)
            shown = steps[k][b].isfinite()  # min_new_tokens sets the stop tokens to -inf before our recorder
            assert (~shown).sum() <= 2, f"sample {b}, step {k}: {(~shown).sum()} logits not finite"
            torch.testing.assert_close(steps[k][b][shown], logits[0, -1][shown], atol=1e-4, rtol=1e-4)
            ids.append(int(logits[0, -1].argmax()))
        assert answer == tok.decode(ids[-new:], skip_special_tokens=True).strip()
    pics[0].save(tmp_path / "pic.png")
    assert cli_main(["ask", str(tmp_path / "out"), str(tmp_path / "pic.png"), "what is it", "--max-tokens", "12"]) == 0
    assert capsys.readouterr().out.strip() != ""


def test_comp_mm_errors_name_what_is_missing(tmp_path):
    tok = _tokenizer()
    s, config = mm_checkpoint(tmp_path / "mm", tok)
    with pytest.raises(ValueError, match="SliMM-X/CoMP-SigLIP-So400M"):  # the vision config is not in their folder
        convert_comp_mm(tmp_path / "mm")
    del s["model.layers.1.mlp.up_proj.weight"]
    s["model.extra.weight"] = torch.zeros(1)
    save_file(s, tmp_path / "mm" / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*model\.extra\.weight"):
        convert_comp_mm(tmp_path / "mm", tmp_path / "mm" / "vfm")
    config["rope_scaling"]["mrope_section"] = [2, 2, 2]
    (tmp_path / "mm" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="mrope_section"):
        convert_comp_mm(tmp_path / "mm", tmp_path / "mm" / "vfm")


def test_the_position_rule_is_checked_against_the_llm():
    with pytest.raises(ValueError, match="model.positions"):
        mc.CoMPConfig(positions="2d")
    with pytest.raises(ValueError, match="get_rope_index"):  # a 1-D LLM cannot follow M-RoPE
        mc.CoMPModel.from_preset("tiny", positions="mrope")


def test_loading_their_folder_directly_points_to_the_converter(tmp_path):
    mm_checkpoint(tmp_path / "mm", _tokenizer())
    with pytest.raises(FileNotFoundError, match="minicomp convert"):
        mc.CoMPModel.from_pretrained(tmp_path / "mm")
