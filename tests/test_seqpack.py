"""Padding-free LLM input (minicomp.seqpack): the row plan, the packing maps, and losses and
gradients equal to the padded computation."""
import copy
import random

import pytest
import torch

import minicomp as mc
from minicomp import data
from minicomp.seqpack import RowPacking, plan_rows

IGNORE = data.IGNORE


def test_plan_rows_first_fit_decreasing():
    rng = random.Random(0)
    for _ in range(50):
        lengths = [rng.randint(0, 30) for _ in range(rng.randint(1, 20))]
        cap = max(max(lengths), 1) + rng.randint(0, 30)
        rows = plan_rows(lengths, cap)
        flat = sorted(i for r in rows for i in r)
        assert flat == [i for i, n in enumerate(lengths) if n > 0]  # every non-empty sequence exactly once
        assert all(sum(lengths[i] for i in r) <= cap for r in rows)
        assert rows == plan_rows(lengths, cap)  # deterministic
        # first fit: no row could have taken a sequence placed in a later row when it was placed
        assert len(rows) <= sum(n > 0 for n in lengths)
    assert plan_rows([5, 4, 3, 2, 1], 6) == [[0, 4], [1, 3], [2]]
    with pytest.raises(ValueError, match="does not fit"):
        plan_rows([7], 6)


def test_row_packing_maps_tokens_and_labels():
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    x = torch.arange(24).view(4, 6) * 10
    rows = RowPacking.from_mask(mask)
    assert rows.src.shape == (2, 6)  # first fit: the 1-token row joins the 5-token one
    packed = rows.pack(x, fill=-1)
    assert packed.tolist() == [[0, 10, 20, 30, 40, 60], [120, 130, 140, -1, -1, -1]]
    assert rows.position_ids.tolist() == [[0, 1, 2, 3, 4, 0], [0, 1, 2, 0, 1, 2]]  # filler: a sequence of its own
    assert rows.seq.tolist() == [[0, 0, 0, 0, 0, 1], [2, 2, 2, -1, -1, -1]]
    labels = torch.full((4, 6), 7)
    assert rows.labels(labels, IGNORE).tolist() == [[IGNORE, 7, 7, 7, 7, IGNORE], [IGNORE, 7, 7, IGNORE, IGNORE, IGNORE]]
    h = torch.randn(4, 6, 3)
    means = rows.mean_per_sequence(rows.pack(h), 4)
    for i in range(3):
        torch.testing.assert_close(means[i], h[i, :int(mask[i].sum())].mean(0))
    assert means[3].abs().sum() == 0  # an empty row: zero, not NaN
    with pytest.raises(ValueError, match="right-padded"):
        RowPacking.from_mask(torch.tensor([[0, 1, 1]]))


def _mixed_batch(model):
    """Long image samples and short text-only ones: packing saves rows."""
    ds = data.SyntheticDataset("train", 4, seed=3, task="mix")
    proc = model.processor(max_tokens=32)
    exs = [proc(ds[i]) for i in range(4)]
    for j, (q, a) in enumerate([("hi", "hello"), ("what is two", "two"), ("ok", "yes"), ("a", "b")]):
        conv = [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        exs.insert(2 * j + 1, {"pixels": None, **data.encode_conversation(model.tokenizer, conv),
                               "align_ids": model.tokenizer(a)["input_ids"], "id": f"text{j}"})
    return data.collate(exs, model.tokenizer.pad_token_id)


def test_packed_losses_and_gradients_equal_padded():
    model = mc.CoMPModel.from_preset("tiny")
    model.set_word_prior(torch.rand(model.llm.get_input_embeddings().num_embeddings) + 0.1)
    b = _mixed_batch(model)
    rows = RowPacking.from_mask(b.attention_mask)
    assert rows.src.shape[0] < b.attention_mask.shape[0]  # the batch does pack
    assert RowPacking.from_mask(b.align_mask[b.image_index]).src.numel() <= b.align_mask[b.image_index].numel()
    results = {}
    for pack in (False, True):
        m = copy.deepcopy(model)
        m.config.pack_sequences = pack
        out = m(b)
        out.loss.backward()
        grads = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
        f_t = m.text_features(b.align_ids, b.align_mask)
        results[pack] = out, grads, f_t
    (a, ga, fa), (c, gc, fc) = results[False], results[True]
    torch.testing.assert_close(c.loss_dec, a.loss_dec, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c.loss_align, a.loss_align, rtol=1e-5, atol=1e-5)
    assert c.n_supervised == a.n_supervised
    torch.testing.assert_close(fc, fa, rtol=1e-5, atol=1e-5)  # F_t, the caption pass
    assert ga.keys() == gc.keys() and {"vision", "merger", "llm"} <= {n.split(".")[0] for n in ga}
    for n in ga:
        torch.testing.assert_close(gc[n], ga[n], rtol=1e-4, atol=1e-6, msg=n)


def test_packing_is_used_only_where_it_saves_rows():
    model = mc.CoMPModel.from_preset("tiny")
    b = _mixed_batch(model)
    calls = []
    orig = model.llm.base_model.forward

    def spy(*args, **kw):
        calls.append(kw.get("position_ids") is not None)
        return orig(*args, **kw)

    model.llm.base_model.forward = spy
    model.config.align = False
    model(b)
    ex = model.processor(max_tokens=32)(data.SyntheticDataset("train", 1, seed=3, task="mix")[0])
    same = data.collate([ex, ex], model.tokenizer.pad_token_id)
    model(same)  # two equal rows: nothing to save, the padded layout
    assert calls == [True, False]
