"""FSDP2 (minicomp.shard) on 2 CPU processes with gloo: the sharded step equals the 1-process step,
the ranks end with identical weights, and a rank whose batch has no image neither aborts nor hangs."""
import datetime
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import minicomp as mc
import minicomp.data as d
from minicomp.shard import decoder_layers, shard

WORLD, TIMEOUT_S = 2, 240


def _model():
    torch.manual_seed(0)
    return mc.CoMPModel.from_preset("tiny")


def _batch(model, rank, text_only_rank):
    """Two samples per rank; on text_only_rank, their images and image tokens removed."""
    ds = d.SyntheticDataset("train", 16, seed=0)
    exs = [model.processor(fixed_size=64)(ds[i]) for i in (2 * rank, 2 * rank + 1)]
    if rank == text_only_rank:
        for e in exs:
            keep = [t != model.config.image_token_id for t in e["input_ids"]]
            e.update(pixels=None, input_ids=[t for t, k in zip(e["input_ids"], keep) if k],
                     labels=[t for t, k in zip(e["labels"], keep) if k])
    return d.collate(exs, model.tokenizer.pad_token_id)


def _step(model, batches):
    """One AdamW step on the mean of the batches' losses -> (losses, grads, weights)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for b in batches:
        out = model(b)
        (out.loss / len(batches)).backward()
        losses.append(out.loss.item())
    full = lambda t: t.full_tensor() if hasattr(t, "full_tensor") else t  # noqa: E731 (DTensor shards -> whole)
    grads = {n: full(p.grad).clone() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    return losses, grads, {n: full(p.detach()).clone() for n, p in model.named_parameters()}


def _worker(rank, init, text_only_rank, out):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=120))
    torch.set_num_threads(1)
    model = shard(_model())
    torch.save(_step(model, [_batch(model, rank, text_only_rank)]), f"{out}.{rank}")
    dist.destroy_process_group()


def _spawn(tmp_path, text_only_rank):
    ctx = mp.spawn(_worker, args=(f"file://{tmp_path}/pg", text_only_rank, str(tmp_path / "out")), nprocs=WORLD,
                   join=False)
    t0 = time.time()
    while not ctx.join(timeout=5):
        if time.time() - t0 > TIMEOUT_S:  # a deadlock fails the test instead of hanging CI
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"FSDP2 ranks still running after {TIMEOUT_S} s: deadlocked collectives?")
    return [torch.load(tmp_path / f"out.{r}") for r in range(WORLD)]


@pytest.mark.parametrize("text_only_rank", [None, 1], ids=["images-on-both", "rank-1-text-only"])
def test_fsdp2_step_equals_one_process_and_ranks_agree(tmp_path, text_only_rank):
    ranks = _spawn(tmp_path, text_only_rank)
    model = _model()
    losses, grads, weights = _step(model, [_batch(model, r, text_only_rank) for r in range(WORLD)])
    assert [r[0][0] for r in ranks] == pytest.approx(losses, abs=1e-5)  # each rank's loss on its own batch
    for name, g in grads.items():  # FSDP2 averages the ranks' gradients: the 1-process mean
        torch.testing.assert_close(ranks[0][1][name], g, atol=1e-6, rtol=1e-5, msg=name)
    assert set(ranks[0][2]) == set(weights)
    for name, w in weights.items():
        assert torch.equal(ranks[0][2][name], ranks[1][2][name]), name  # gathered weights identical on both ranks
        torch.testing.assert_close(ranks[0][2][name], w, atol=1e-6, rtol=1e-5, msg=name)
    tied = model.llm.get_input_embeddings().weight is model.llm.get_output_embeddings().weight
    assert tied  # the toy LLM ties its embeddings: one parameter in the root unit


def test_units_are_the_vision_tower_and_the_decoder_layers():
    model = _model()
    assert len(decoder_layers(model.llm)) == model.llm.config.num_hidden_layers
    with pytest.raises(ValueError, match="_no_split_modules"):
        decoder_layers(torch.nn.Linear(2, 2))
