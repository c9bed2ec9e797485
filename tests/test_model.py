"""PatchMerger and CoMPModel: Eq. 5–11 against hand computations, gradients, generation, save/load."""
import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

import minicomp as mc
from minicomp import data
from minicomp.toy import TOY_LLM_PATH
from minicomp.xent import CHUNK_BYTES

IGNORE = data.IGNORE


# ---- merger (Eq. 5) ---------------------------------------------------------------------------

def test_merger_token_is_the_mlp_of_its_2x2_block():
    torch.manual_seed(0)
    h, w, D = 4, 6, 3
    merger = mc.PatchMerger(D, 5)
    grid = torch.randn(h, w, D)  # a known grid, (row, col) -> token
    other = torch.randn(2 * 2, D)  # a second image, 2x2 patches, packed after it
    packed = mc.Packed.from_list([grid.reshape(h * w, D), other], [(h, w), (2, 2)])
    out = merger(packed)
    assert out.grid_hw.tolist() == [[2, 3], [1, 1]] and out.tokens.shape == (7, 5)
    for bi in range(h // 2):
        for bj in range(w // 2):  # block (bi, bj): patches (2bi + a, 2bj + b), a, b in {0, 1}, row-major
            block = [grid[2 * bi + a, 2 * bj + b] for a in range(2) for b in range(2)]
            x = torch.cat([merger.norm(t) for t in block])  # (4·D,)
            torch.testing.assert_close(out.tokens[bi * (w // 2) + bj], merger.mlp(x))
    torch.testing.assert_close(out.tokens[6], merger.mlp(torch.cat(list(merger.norm(other)))))


def test_merger_errors():
    merger = mc.PatchMerger(4, 8)
    with pytest.raises(ValueError, match=r"image 1: patch grid 3x4 is not divisible by merge=2"):
        merger(mc.Packed.from_list([torch.randn(4, 4), torch.randn(12, 4)], [(2, 2), (3, 4)]))
    with pytest.raises(ValueError, match="width 5, expected 4"):
        merger(mc.Packed.from_list([torch.randn(4, 5)], [(2, 2)]))


# ---- the toy model ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return mc.CoMPModel.from_preset("tiny").eval()


def _batch(model, n=4, text_only=True, max_tokens=32):
    proc = model.processor(max_tokens=max_tokens)
    ds = data.SyntheticDataset("train", n)
    exs = [proc(ds[i]) for i in range(n)]
    if text_only:  # a text-only sample in the middle
        conv = [{"from": "human", "value": "How many sides has a square?"}, {"from": "gpt", "value": "4"}]
        exs.insert(1, {"pixels": None, **data.encode_conversation(model.tokenizer, conv),
                       "align_ids": data.encode_alignment_text(model.tokenizer, "a square"), "id": "text-only"})
    return data.collate(exs, model.tokenizer.pad_token_id)


def test_tiny_preset_is_the_toy_world(tiny):
    assert tiny.vision.patch_size == 8 and tiny.vision.rope and tiny.llm.config.model_type == "qwen2"
    assert tiny.merger.vision_dim == 128 and tiny.merger.llm_dim == tiny.llm.config.hidden_size
    assert tiny.tokenizer.convert_ids_to_tokens(tiny.config.image_token_id) == "<image>"


def test_image_tokens_are_spliced_in_order(tiny):
    b = _batch(tiny)
    embeds, merged = tiny.embed(b.input_ids, b.images, b.image_index, b.ids)
    plain = tiny.llm.get_input_embeddings()(b.input_ids)
    is_img = b.input_ids == tiny.config.image_token_id
    torch.testing.assert_close(embeds[~is_img], plain[~is_img])  # text positions untouched
    k = 0
    for img_i, sample in enumerate(b.image_index.tolist()):  # image j's tokens fill sample j's positions, in order
        pos = is_img[sample].nonzero().view(-1)
        n = merged.lengths[img_i]
        torch.testing.assert_close(embeds[sample, pos], merged.tokens[k:k + n])
        k += n
    assert k == merged.tokens.shape[0] and not is_img[1].any()  # sample 1 is text-only


@pytest.mark.parametrize("chunk_bytes", [None, 4 * 502 * 5])  # the default (one chunk here), and 5-row chunks
def test_loss_dec_equals_masked_cross_entropy_over_full_logits(tiny, chunk_bytes, monkeypatch):
    monkeypatch.setattr("minicomp.xent.CHUNK_BYTES", chunk_bytes or CHUNK_BYTES)
    b = _batch(tiny)
    out = tiny(b)
    assert out.n_supervised > (5 if chunk_bytes else 0)
    embeds, _ = tiny.embed(b.input_ids, b.images, b.image_index, b.ids)
    logits = tiny.llm(inputs_embeds=embeds, attention_mask=b.attention_mask).logits  # (B, L, V), all positions
    target = b.labels[:, 1:]
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE)
    torch.testing.assert_close(out.loss_dec, ref)
    assert out.n_supervised == int((target != IGNORE).sum()) > 0
    torch.testing.assert_close(out.loss, out.loss_dec + tiny.config.alpha * out.loss_align)


def test_loss_align_equals_alignment_loss_of_manually_pooled_features(tiny):
    b = _batch(tiny)
    out = tiny(b)
    merged = tiny.encode_images(b.images)
    f_v = torch.stack([t.mean(0) for t in merged.split()])  # Eq. 7, per image
    f_t = []
    for s in b.image_index.tolist():  # the caption alone through the LLM: last hidden states, real tokens only
        n = int(b.align_mask[s].sum())
        hs = tiny.llm(input_ids=b.align_ids[s:s + 1, :n], output_hidden_states=True).hidden_states[-1]
        f_t.append(hs[0].mean(0))
    ref = mc.alignment_loss(f_v, torch.stack(f_t), tiny.llm.get_input_embeddings().weight, None, 0.005, 0.005, 3)
    torch.testing.assert_close(out.loss_align, ref, rtol=1e-4, atol=1e-4)
    assert len(b.images) == 4 and len(b.ids) == 5  # the text-only sample had no part in it


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    parts = {"vision": model.vision, "merger": model.merger, "llm": model.llm}
    return {k: any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters()) for k, m in parts.items()}


def test_gradients_reach_the_right_parts():
    model = mc.CoMPModel.from_preset("tiny")
    b = _batch(model, text_only=False)
    assert _grads(model, model(b).loss_align) == {"vision": True, "merger": True, "llm": False}
    assert _grads(model, model(b).loss_dec) == {"vision": True, "merger": True, "llm": True}
    model.zero_grad(set_to_none=True)
    model(b).loss_align.backward()
    assert model.llm.get_input_embeddings().weight.grad is None  # prototypes: stop-gradient


def test_alignment_can_be_switched_off_and_text_only_batches_work(tiny):
    b = _batch(tiny)
    off = copy.deepcopy(tiny)
    off.config.align = False
    out = off(b)
    assert out.loss_align.item() == 0 and torch.equal(out.loss, out.loss_dec)
    conv = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    ex = {"pixels": None, **data.encode_conversation(tiny.tokenizer, conv), "align_ids": [5], "id": "t"}
    only_text = tiny(data.collate([ex], tiny.tokenizer.pad_token_id))
    assert torch.isfinite(only_text.loss) and only_text.loss_align.item() == 0


def test_bad_input_errors(tiny):
    b = _batch(tiny, text_only=False)
    wrong = copy.deepcopy(b)
    wrong.input_ids[2, (wrong.input_ids[2] == tiny.config.image_token_id).nonzero()[0]] = 5  # one placeholder fewer
    with pytest.raises(ValueError, match=r"sample 'train-0-2': \d+ image placeholder tokens but its image\(s\) give"):
        tiny(wrong)
    empty = data.Batch([], torch.zeros(0, dtype=torch.long), torch.zeros(0, 0, dtype=torch.long),
                       torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, 0, dtype=torch.long),
                       torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, 0, dtype=torch.long), [])
    with pytest.raises(ValueError, match="empty batch"):
        tiny(empty)

    class NoEmbeds(torch.nn.Module):
        config = tiny.llm.config

        def forward(self, input_ids, attention_mask=None):
            return input_ids

    with pytest.raises(ValueError, match="NoEmbeds.forward does not accept inputs_embeds"):
        mc.CoMPModel(tiny.vision, NoEmbeds(), None, mc.CoMPConfig(image_token_id=3))
    with pytest.raises(ValueError, match="unknown CoMPConfig field"):
        mc.CoMPConfig.from_dict({"alpah": 0.1})
    with pytest.raises(ValueError, match="preset 'huge'"):
        mc.CoMPModel.from_preset("huge")


def test_generate_is_greedy_deterministic_and_batch_independent(tiny):
    ds = data.SyntheticDataset("test", 3)
    images = [ds[0].image, None, ds[2].image]
    prompts = ["What is written on line 1?", "How many shapes are there?", "How many shapes are there?"]
    batch = tiny.generate(images, prompts, max_tokens=64, max_new_tokens=8)
    assert batch == tiny.generate(images, prompts, max_tokens=64, max_new_tokens=8)
    one_by_one = [tiny.generate([im], [p], max_tokens=64, max_new_tokens=8)[0] for im, p in zip(images, prompts)]
    assert batch == one_by_one and all(isinstance(s, str) for s in batch)


def test_save_load_round_trip_and_vision_export(tiny, tmp_path):
    model = copy.deepcopy(tiny)
    model.set_word_prior(torch.arange(1, 400, dtype=torch.float))  # shorter than the vocabulary: padded
    with torch.no_grad():
        model.merger.mlp[0].bias.add_(0.1)  # not the initialisation any more
    model.save_pretrained(tmp_path / "m")
    loaded = mc.CoMPModel.from_pretrained(tmp_path / "m").eval()
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k
    b = _batch(model)
    a, c = model(b), loaded(b)
    assert torch.equal(a.loss, c.loss) and torch.equal(a.loss_align, c.loss_align)
    ds = data.SyntheticDataset("test", 1)
    assert model.generate([ds[0].image], ["How many lines of text are there?"], max_tokens=64) == \
        loaded.generate([ds[0].image], ["How many lines of text are there?"], max_tokens=64)
    model.save_pretrained(tmp_path / "m")  # overwriting a saved model leaves exactly one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]

    model.export_vision(tmp_path / "vfm")
    enc = mc.CRoPEViT.from_pretrained(tmp_path / "vfm").eval()
    imgs = [torch.randn(3, 48, 80), torch.randn(3, 64, 64)]
    assert torch.equal(enc(imgs).tokens, model.vision(imgs).tokens)
    model.vision.rope = False  # without RoPE the export is also a plain timm ViT
    model.export_vision(tmp_path / "plain")
    vit = timm.create_model(f"local-dir:{tmp_path / 'plain'}", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(vit.forward_features(x)[:, vit.num_prefix_tokens:].reshape(-1, 128),
                               model.vision(list(x)).tokens)


def test_second_architecture_llama():
    tok = AutoTokenizer.from_pretrained(TOY_LLM_PATH)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    vit = timm.create_model("vit_small_patch16_224", img_size=64, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                            num_classes=0)
    model = mc.CoMPModel(mc.CRoPEViT.from_timm(vit), llama, tok, mc.CoMPConfig())
    b = _batch(model)
    out = model(b)
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.merger.mlp[0].weight.grad is not None
    assert len(model.generate([None], ["hi"], max_new_tokens=3)) == 1


@pytest.mark.slow
def test_full_scale_architectures_forward_backward_on_cpu():
    """Qwen2.5-0.5B's architecture (from its known config, no download) and SigLIP-So400M/14,
    random weights: one forward and backward on a small native-resolution batch."""
    model = mc.CoMPModel.from_pretrained(vision="vit_so400m_patch14_siglip_384", llm="Qwen/Qwen2.5-0.5B",
                                         pretrained=False)
    assert model.llm.config.vocab_size == 151936 and model.merger.llm_dim == 896 and model.vision.embed_dim == 1152
    imgs = [torch.randn(3, 56, 84), torch.randn(3, 112, 56)]  # grids 4x6 and 8x4 -> 6 and 8 merged tokens
    ids = torch.randint(0, 1000, (2, 30))
    ids[0, 2:8] = ids[1, 3:11] = model.config.image_token_id
    labels = ids.clone()
    labels[:, :15] = IGNORE
    b = data.Batch(imgs, torch.tensor([0, 1]), ids, torch.ones_like(ids), labels, torch.randint(0, 1000, (2, 8)),
                   torch.ones(2, 8, dtype=torch.long), ["a", "b"])
    out = model(b)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.n_supervised == 2 * 15  # labels 15..29 of each row
    assert model.vision.blocks[0].attn.qkv.weight.grad is not None


def test_tokenizer_without_image_token_pad_or_template_is_completed():
    """A tokenizer that lacks <image>, a pad token and a chat template (like many base LLMs):
    <image> is added, the embeddings grow to fit, pad falls back to eos, ChatML is used."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    texts = [data.make_sample(0, "train", i, render=False).caption for i in range(60)]
    raw.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"], show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>")
    assert "<image>" not in tok.get_vocab() and tok.pad_token is None and tok.chat_template is None
    n0 = len(tok)
    lm = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1))
    vit = timm.create_model("vit_small_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                            num_classes=0)
    model = mc.CoMPModel(mc.CRoPEViT.from_timm(vit), lm, tok)
    assert tok.convert_ids_to_tokens(model.config.image_token_id) == "<image>"
    assert lm.get_input_embeddings().num_embeddings == len(tok) == n0 + 1 and tok.pad_token == "<eos>"
    out = model(_batch(model, n=2))
    assert torch.isfinite(out.loss) and out.n_supervised > 0


def test_prototypes_are_lm_head_by_default_and_the_input_embeddings_on_request():
    """The authors score against lm_head.weight; the paper names the word embeddings. An untied
    LLM (as Qwen2.5-7B) tells them apart."""
    losses = {}
    for which in ("output", "input"):
        torch.manual_seed(0)
        model = mc.CoMPModel.from_preset("tiny", pretrained=False, prototypes=which).eval()
        torch.manual_seed(1)
        model.llm.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.llm.lm_head.weight))  # untied
        assert model.llm.get_output_embeddings().weight is not model.llm.get_input_embeddings().weight
        b = _batch(model, text_only=False)
        with torch.no_grad():
            out = model(b)
            merged = model.encode_images(b.images)
        f_v = torch.stack([t.mean(0) for t in merged.split()])  # (n, D)
        f_t = model.text_features(b.align_ids, b.align_mask)  # (n, D)
        W = (model.llm.lm_head.weight if which == "output" else model.llm.get_input_embeddings().weight)
        ref = mc.alignment_loss(f_v, f_t, W, None, 0.005, 0.005, 3)
        torch.testing.assert_close(out.loss_align, ref, rtol=1e-5, atol=1e-5)
        losses[which] = out.loss_align.item()
    assert losses["output"] != losses["input"]
    with pytest.raises(ValueError, match=r"model.prototypes='words', expected one of \('output', 'input'\)"):
        mc.CoMPConfig(prototypes="words")


def test_alignment_text_is_the_caption_or_the_authors_shuffled_answers(tiny):
    s = data.SyntheticDataset("train", 2, task="qa")[1]
    answers = [t["value"] for t in s.conversations if t["from"] == "gpt"]
    assert tiny.processor().alignment_text(s) == s.caption
    proc = data.Processor(tiny.tokenizer, patch=8, align_text="shuffled_answers")
    text = proc.alignment_text(s)
    assert sorted(text.split(" ")) == sorted(" ".join(answers).split(" "))  # the answers, joined with spaces
    assert all(proc.alignment_text(s) == text for _ in range(3))  # seeded by the sample id: resume is exact
    orders = {data.Processor(tiny.tokenizer, patch=8, align_text="shuffled_answers").alignment_text(
        data.Sample(None, "", [{"from": "gpt", "value": str(k)} for k in range(6)], {"id": i})) for i in range(20)}
    assert len(orders) > 5  # and shuffled: different ids, different orders
    with pytest.raises(ValueError, match="align_text"):
        mc.CoMPConfig(align_text="captions")


def test_learnable_prototypes_variant_trains_its_own_prototypes():
    model = mc.CoMPModel.from_preset("tiny", variant="learnable")
    b = _batch(model, text_only=False)
    model(b).loss_align.backward()
    assert model.prototypes.grad is not None and model.prototypes.grad.abs().sum() > 0
    assert model.llm.get_input_embeddings().weight.grad is None


def test_full_scale_llm_from_a_local_config_json_without_weights(tmp_path):
    from transformers import Qwen2Config
    Qwen2Config(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2).save_pretrained(tmp_path)  # config.json only, no weights, no tokenizer
    model = mc.CoMPModel.from_pretrained(vision="vit_small_patch16_224", llm=str(tmp_path), pretrained=False,
                                         image_token_id=7)
    assert model.llm.config.hidden_size == 64 and model.tokenizer is None and model.merger.vision_dim == 384
    with pytest.raises(ValueError, match="image placeholder id is unknown"):
        mc.CoMPModel.from_pretrained(vision="vit_small_patch16_224", llm=str(tmp_path), pretrained=False)


def test_transformers_bars_off_for_small_local_models_only():
    from transformers.utils import logging as hf_logging

    from minicomp.progress import no_progress_bars, small_local_model
    assert small_local_model(TOY_LLM_PATH) and not small_local_model("Qwen/Qwen2.5-0.5B")
    assert hf_logging.is_progress_bar_enabled()
    with no_progress_bars(True):
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled()  # restored
    with no_progress_bars(False):
        assert hf_logging.is_progress_bar_enabled()
