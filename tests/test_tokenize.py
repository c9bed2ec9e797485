import pytest
import torch
from transformers import AutoTokenizer

import minicomp.data as d
from minicomp.toy import build_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    ds = d.SyntheticDataset("train", 300)
    texts = [t for i in range(300) for t in [ds[i].caption] + [c["value"] for c in ds[i].conversations]]
    path = tmp_path_factory.mktemp("tok")
    build_tokenizer(texts, vocab_size=800).save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)  # through the same path as Qwen2.5's tokenizer


CONV = [{"from": "human", "value": "<image>\nWhat is on line 2?"}, {"from": "gpt", "value": "stone 42"},
        {"from": "human", "value": "How many lines?"}, {"from": "gpt", "value": "3"}]


def test_toy_tokenizer_round_trips_and_has_single_token_specials(tok):
    for s in ("<|im_start|>", "<|im_end|>", "<image>", "<|endoftext|>"):
        assert len(tok(s, add_special_tokens=False)["input_ids"]) == 1
    text = "A bar chart with 4 bars: A is 12, B is 7."
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"


def test_only_answers_are_supervised_and_image_is_expanded(tok):
    e = d.encode_conversation(tok, CONV, n_image_tokens=7)
    ids, labels = e["input_ids"], e["labels"]
    image_id = tok.convert_tokens_to_ids("<image>")
    assert ids.count(image_id) == 7 and len(ids) == len(labels)
    supervised = [t for t in labels if t != d.IGNORE]
    assert tok.decode(supervised).replace("\n", "|") == "stone 42<|im_end|>|3<|im_end|>|"
    assert all(lab == d.IGNORE for t, lab in zip(ids, labels) if t == image_id)
    assert all(lab in (d.IGNORE, t) for t, lab in zip(ids, labels))


def test_text_only_and_placeholder_checks(tok):
    text_only = [{"from": "human", "value": "What is 2 + 2?"}, {"from": "gpt", "value": "4"}]
    e = d.encode_conversation(tok, text_only)
    assert tok.convert_tokens_to_ids("<image>") not in e["input_ids"]
    with pytest.raises(ValueError, match="placeholders for one image"):
        d.encode_conversation(tok, text_only, n_image_tokens=4)
    with pytest.raises(ValueError, match="placeholders for no image"):
        d.encode_conversation(tok, CONV, n_image_tokens=0)


def test_truncation_never_cuts_image_tokens(tok):
    full = d.encode_conversation(tok, CONV, n_image_tokens=20)
    cut = d.encode_conversation(tok, CONV, n_image_tokens=20, max_length=30)
    assert cut["input_ids"] == full["input_ids"][:30] and len(cut["labels"]) == 30
    with pytest.raises(d.TooLong, match="20 image tokens do not fit in max_length=10"):
        d.encode_conversation(tok, CONV, n_image_tokens=20, max_length=10)


def test_alignment_text_is_the_caption_alone(tok):
    cap = "A document with 2 lines of text."
    ids = d.encode_alignment_text(tok, cap)
    assert tok.decode(ids) == cap and tok.convert_tokens_to_ids("<|im_start|>") not in ids


def test_processor_and_collate_on_a_mixed_batch(tok):
    ds = d.SyntheticDataset("val", 3)
    text_only = d.Sample(None, "four", [{"from": "human", "value": "2 + 2?"}, {"from": "gpt", "value": "4"}], {"id": "t"})
    native = d.Processor(tok, patch=8, merge=2, max_tokens=64, mean=(0.5,) * 3, std=(0.25,) * 3)
    fixed = d.Processor(tok, patch=8, merge=2, fixed_size=64)
    exs = [native(ds[0]), native(text_only), fixed(ds[1]), native(ds[2])]
    image_id = tok.convert_tokens_to_ids("<image>")
    for e in (exs[0], exs[3]):
        _, H, W = e["pixels"].shape
        assert H % 16 == 0 and W % 16 == 0 and (H // 16) * (W // 16) <= 64
        assert e["input_ids"].count(image_id) == (H // 16) * (W // 16)
    assert exs[2]["pixels"].shape == (3, 64, 64) and exs[2]["input_ids"].count(image_id) == 16
    assert exs[0]["pixels"].min() >= -2.0 - 1e-6 and exs[0]["pixels"].max() <= 2.0 + 1e-6  # (x - .5) / .25
    b = d.collate(exs, pad_id=tok.pad_token_id)
    assert b.image_index.tolist() == [0, 2, 3] and len(b.images) == 3 and b.ids == [ds[0].meta["id"], "t", ds[1].meta["id"], ds[2].meta["id"]]
    L = max(len(e["input_ids"]) for e in exs)
    assert b.input_ids.shape == b.labels.shape == b.attention_mask.shape == (4, L)
    for i, e in enumerate(exs):
        n = len(e["input_ids"])
        assert b.attention_mask[i].sum() == n and b.input_ids[i, :n].tolist() == e["input_ids"]
        assert (b.labels[i, n:] == d.IGNORE).all() and (b.input_ids[i, n:] == tok.pad_token_id).all()
    assert b.align_mask.sum(1).tolist() == [len(e["align_ids"]) for e in exs]
    with pytest.raises(ValueError, match="empty"):
        d.collate([], 0)
    with pytest.raises(ValueError, match="multiple of patch"):
        d.Processor(tok, patch=8, fixed_size=60)


def test_merged_tokens():
    assert d.merged_tokens(448, 896, patch=14) == 16 * 32
    assert d.merged_tokens(4000, 4000, patch=14, max_tokens=3000) <= 3000


def test_prior_counts_from_the_cli(tok, tmp_path):
    import json

    from minicomp.align import word_prior
    from minicomp.cli import main
    from minicomp.data.prior import count_tokens, load_counts

    tok_dir = tmp_path / "tok"
    tok.save_pretrained(tok_dir)
    records = [{"id": "a", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "red red blue"}]},
               {"id": "b", "conversations": [{"from": "human", "value": "Hi"}]}]  # no answer: skipped
    (tmp_path / "caps.json").write_text(json.dumps(records))
    assert main(["prior", "--tokenizer", str(tok_dir), "--data", str(tmp_path / "caps.json"),
                 "--out", str(tmp_path / "counts.safetensors")]) == 0
    counts = load_counts(tmp_path / "counts.safetensors")
    expected = torch.zeros(len(tok), dtype=torch.int64)
    for t in tok("red red blue", add_special_tokens=False)["input_ids"]:
        expected[t] += 1
    assert torch.equal(counts, expected)
    assert torch.equal(count_tokens(["red red blue"], tok, batch_size=1), expected)
    u = word_prior(counts)
    assert u.shape == (len(tok),) and u.argmax() == counts.argmax()
    assert main(["prior", "--tokenizer", str(tok_dir), "--synthetic", "20", "--out", str(tmp_path / "s.safetensors")]) == 0
    assert load_counts(tmp_path / "s.safetensors").sum() > 100


def test_image_text_writes_qwen2_vl_markers_and_the_default_is_llava(tok):
    """data.ImageText: LLaVA's `<image>` + newline by default (the data's own text); the authors'
    Qwen2-VL form puts the image tokens between vision start and end, with no newline after."""
    tok = AutoTokenizer.from_pretrained(tok.name_or_path)
    tok.add_special_tokens({"additional_special_tokens": ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"]})
    vs, pad, ve, image = tok.convert_tokens_to_ids(["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<image>"])
    qwen = d.ImageText("<|image_pad|>", "<|vision_start|>", "<|vision_end|>")
    assert d.ImageText().wrap(CONV[0]["value"]) == CONV[0]["value"]
    assert qwen.wrap(CONV[0]["value"]) == "<|vision_start|><|image_pad|><|vision_end|>What is on line 2?"
    e = d.encode_conversation(tok, CONV, n_image_tokens=5, image=qwen)
    i = e["input_ids"].index(vs)
    assert e["input_ids"][i:i + 7] == [vs] + [pad] * 5 + [ve] and image not in e["input_ids"]
    assert tok.decode(e["input_ids"][i + 7:i + 9]) == "What is"  # no newline after the image
    p = d.encode_prompt(tok, "What is on line 2?", 5, qwen)
    assert p.count(pad) == 5 and p[p.index(pad) - 1] == vs and p[p.index(pad) + 5] == ve
    assert d.encode_prompt(tok, "What is on line 2?", 5) == d.encode_prompt(tok, "What is on line 2?", 5, d.ImageText())
    with pytest.raises(ValueError, match="placeholders"):  # the data's placeholder is missing
        d.encode_conversation(tok, CONV[2:], n_image_tokens=5, image=qwen)
