"""What a run promises under bad input and faults (issue: reliability), one test per promise.

- A record that fails only when read (an image truncated after its header, a conversation whose
  image does not fit `max_length`) is named, counted and replaced deterministically: batches
  stay full and the run goes on; `strict_data=True` raises instead, naming the record.
- Records that could never work are refused when the file is read: the assistant speaking first,
  `{"bytes": ...}` that is not encoded bytes (a path in JSON would dodge the image-root check),
  a NUL byte in a path. One bad JSONL line (invalid UTF-8, nested too deep) is one bad record;
  a broken .json file is an error naming the file, before anything trains.
- The word prior counts text without decoding any image.
- A `datasets` save_to_disk folder is accepted as stage data.
- `--resume` refuses a config that differs from the saved one and leaves that one in place.
- The NaN guard never names as good a checkpoint whose weights gave the non-finite loss, and
  sets it aside; weights or optimiser state that are not finite are never saved.
- A torn newest checkpoint is passed over for the one before (and named); a torn last line of
  metrics.jsonl is dropped; a fresh run never appends to old metrics.

Earlier promises live beside the code they test: the empty-stage hang and the run-directory lock
(test_train.py), image formats and regular files (test_llava.py), range checks (test_train.py,
test_model.py) and the CLI's refusals (test_cli.py).
"""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import minicomp as mc
import minicomp.loop as mloop  # the loop's own names, to patch
import minicomp.train as mtrain
from minicomp.config import load_config, load_saved_config
from minicomp.data import BadRecord, LlavaDataset
from minicomp.data.llava import read_records
from minicomp.stage_data import StepBatches, resolve_data, word_prior_counts


def conv(q="<image>\nDescribe the image.", a="A red square."):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


@pytest.fixture(scope="module")
def tiny():
    return mc.CoMPModel.from_preset("tiny", pretrained=False)


@pytest.fixture
def data(tmp_path):
    """An image root with 6 good images and one PNG truncated after its header, and a JSONL whose
    record 2 points at the truncated one and record 4 puts its image after 40 words of text."""
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (48 + 8 * i, 64, 3), dtype=np.uint8)).save(root / f"ok{i}.png")
    full = (root / "ok0.png").read_bytes()
    (root / "torn.png").write_bytes(full[:len(full) // 2])  # the header (size) still reads
    recs = [{"id": f"r{i}", "image": f"ok{i}.png", "conversations": conv()} for i in range(6)]
    recs.insert(2, {"id": "torn", "image": "torn.png", "conversations": conv()})
    recs.insert(4, {"id": "late-image", "image": "ok1.png",
                    "conversations": conv("word " * 40 + "<image>\nDescribe the image.")})
    f = tmp_path / "mid.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return f, root


@pytest.mark.parametrize("source", ["file", "index"])  # the index (minicomp data index) behaves as the file
def test_records_that_fail_when_read_are_named_counted_and_replaced(data, tiny, source, tmp_path):
    f, root = data
    if source == "index":
        from minicomp.data.index import build_index
        build_index(f, tmp_path / "index", image_root=root, workers=1, progress=False)
    ds = LlavaDataset(f, image_root=root) if source == "file" else LlavaDataset(tmp_path / "index")
    assert len(ds) == 8 and not ds.skipped  # both pass construction
    proc = tiny.processor(max_tokens=16, max_length=32)
    order = list(range(8))
    batches = StepBatches(ds, proc, order, 8, 8, 0, 1, tiny.tokenizer.pad_token_id)
    b = batches[0]
    assert len(b.ids) == 8  # full: each failed record replaced by the next that works
    assert b.ids == ["r0", "r1", "r2", "r2", "r3", "r3", "r4", "r5"]  # torn -> r2, late-image -> r3 (i+1, mod n)
    reasons = [r for r, _ in b.skipped]
    assert reasons == ["image unreadable", "conversation too long"]
    assert f"{f} record 2 (id 'torn')" in b.skipped[0][1] and "late-image" in b.skipped[1][1]
    again = batches[0]  # a pure function of the index: resume stays exact
    assert again.ids == b.ids and all(x.equal(y) for x, y in zip(again.images, b.images))
    strict = StepBatches(ds, proc, order, 8, 8, 0, 1, tiny.tokenizer.pad_token_id, strict=True)
    with pytest.raises(BadRecord, match=r"record 2 \(id 'torn'\): image unreadable"):
        strict[0]


def test_a_run_goes_on_past_a_truncated_image_and_counts_it(data, tmp_path):
    f, root = data
    cfg = load_config("smoke", sets=["eval_samples=0"])
    cfg.data["mid"] = {"path": str(f), "image_root": str(root)}
    meta = mtrain.train(cfg, tmp_path / "run", progress=False)
    assert meta["global_step"] == sum(s.steps for s in cfg.stages)
    assert sum(meta["skipped_when_read"].values()) >= 1
    assert "skipped when read" in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.parametrize("reason, image, turns", [
    ("assistant turn first", "ok0.png", [{"from": "gpt", "value": "Hello."}] + conv()),
    ("bad embedded image", {"bytes": "ok0.png"}, conv()),  # a path where bytes belong: the root check is dodged
    ("bad embedded image", {"bytes": [1, 2, 3]}, conv()),
    ("bad image path", "ok0.png\x00.txt", conv()),
])
def test_records_that_cannot_work_are_refused_when_read_from_the_file(data, tmp_path, reason, image, turns):
    _, root = data
    f = tmp_path / "bad.json"
    f.write_text(json.dumps([{"id": "good", "image": "ok0.png", "conversations": conv()},
                             {"id": "bad", "image": image, "conversations": turns}]))
    ds = LlavaDataset(f, image_root=root)
    assert len(ds) == 1 and dict(ds.skipped) == {reason: 1}
    with pytest.raises(BadRecord, match=rf"record 1 \(id 'bad'\): {reason}"):
        LlavaDataset(f, image_root=root, strict=True)


def test_one_bad_jsonl_line_is_one_bad_record_and_a_broken_json_file_is_named(tmp_path):
    f = tmp_path / "mixed.jsonl"
    good = json.dumps({"id": "t", "conversations": conv("Hi?", "Hello.")}).encode()
    f.write_bytes(b"\n".join([good, b"\xff\xfe not utf-8", b"[" * 100_000 + b"]" * 100_000, good]) + b"\n")
    ds = LlavaDataset(f)
    assert len(ds) == 2 and dict(ds.skipped) == {"invalid UTF-8": 1, "invalid JSON": 1}
    for content in (b"", b"\xff", b"[" * 100_000):
        (tmp_path / "bad.json").write_bytes(content)
        with pytest.raises(ValueError, match=r"bad\.json: not a valid JSON file"):
            read_records(tmp_path / "bad.json")


def test_a_broken_stage_file_is_an_error_before_any_stage_trains(tmp_path):
    (tmp_path / "empty.json").write_text("")
    cfg = load_config("smoke", sets=["eval_samples=0"])
    cfg.data["qa"] = {"path": str(tmp_path / "empty.json")}  # Stage III's data: checked before Stage I trains
    with pytest.raises(ValueError, match=r"empty\.json: not a valid JSON file"):
        mtrain.train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_the_word_prior_decodes_no_image(data, tiny, monkeypatch):
    f, root = data
    import minicomp.data.llava as llava
    monkeypatch.setattr(llava, "load_image", lambda *a, **k: pytest.fail("an image was decoded"))
    cfg = load_config("smoke")
    cfg.data["mid"] = {"path": str(f), "image_root": str(root)}
    counts = word_prior_counts(cfg, resolve_data(cfg, None), tiny, lambda *a: None, progress=False)
    ids = tiny.tokenizer("A red square.", add_special_tokens=False)["input_ids"]
    assert (counts[ids] == 8).all()  # every record's answer counted, the torn image's too


def test_a_datasets_folder_is_accepted_as_stage_data(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([{"id": "a", "conversations": conv("Hi?", "Hello.")}]).save_to_disk(tmp_path / "ds")
    cfg = load_config("smoke")
    cfg.data["mid"] = {"path": str(tmp_path / "ds")}
    assert resolve_data(cfg, None)["mid"]["path"] == str(tmp_path / "ds")
    assert len(LlavaDataset(tmp_path / "ds")) == 1


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A smoke run stopped after 5 steps (mid II-fixed), a checkpoint at every step."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    cfg = load_config("smoke", sets=["save_every=1", "eval_samples=0"])
    mtrain.train(cfg, out, stop_after=5, progress=False)
    return out, cfg


def _copy(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_resume_refuses_a_different_config_and_keeps_the_saved_one(stopped_run, tmp_path):
    src, _ = stopped_run
    out = _copy(src, tmp_path / "run")
    saved = (out / "config.json").read_text()
    other = load_config("smoke", sets=["save_every=1", "eval_samples=0", "stages.II-fixed=null"])
    with pytest.raises(ValueError, match=r"differs from the run's saved .*config\.json in stages\b"):
        mtrain.train(other, out, resume=True, progress=False)
    lr = load_config("smoke", sets=["save_every=1", "eval_samples=0", "stages.II-fixed.lr.llm=0.5"])
    with pytest.raises(ValueError, match=r"stages\.II-fixed\.lr\.llm.*--force allows only"):
        mtrain.train(lr, out, resume=True, force=True, progress=False)
    logging_only = load_config("smoke", sets=["save_every=2", "eval_samples=0"])
    with pytest.raises(ValueError, match=r"in save_every.*--force accepts these"):
        mtrain.train(logging_only, out, resume=True, progress=False)
    assert (out / "config.json").read_text() == saved  # a refused resume wrote nothing
    older = json.loads(saved)
    del older["strict_data"], older["word_prior_rule"]  # a run saved before these fields existed
    (out / "config.json").write_text(json.dumps(older))
    with pytest.raises(ValueError, match=r"in save_every\. Resume"):  # their defaults count as saved
        mtrain.train(logging_only, out, resume=True, progress=False)
    meta = mtrain.train(logging_only, out, resume=True, force=True, stop_after=1, progress=False)
    assert meta["global_step"] == 6


def test_resume_without_a_preset_continues_the_saved_config(stopped_run, tmp_path):
    src, cfg = stopped_run
    out = _copy(src, tmp_path / "run")
    assert load_saved_config(out / "config.json").to_dict() == cfg.to_dict()
    assert mtrain.main(["--out", str(out), "--resume", "--procs", "1", "--max-steps", "1"]) == 0
    assert json.loads((mtrain.checkpoints(out)[-1] / "meta.json").read_text())["global_step"] == 6
    with pytest.raises(ValueError, match=r"stages\.II-fixed\.lr\.llm"):  # overrides on top are checked as before
        mtrain.main(["--out", str(out), "--resume", "--procs", "1", "--set", "stages.II-fixed.lr.llm=0.5"])
    with pytest.raises(ValueError, match=r"differs from the run.s saved .*stages\.III\.steps"):  # a named preset is compared with the saved config
        mtrain.main(["--preset", "tiny", "--out", str(out), "--resume", "--procs", "1"])
    (out / "config.json").write_text(json.dumps({**cfg.to_dict(), "lr_typo": 1}))
    with pytest.raises(SystemExit, match=r"config\.json: unknown config fields lr_typo.*--preset"):
        mtrain.main(["--out", str(out), "--resume", "--procs", "1"])
    (out / "config.json").write_text("[1, 2]")
    with pytest.raises(SystemExit, match=r"expected a mapping of config fields, got list"):
        mtrain.main(["--out", str(out), "--resume", "--procs", "1"])


def test_nan_guard_sets_aside_the_checkpoint_whose_weights_diverged(tmp_path):
    """A real divergence: Stage II-fixed's LLM learning rate 1e30. Its first step has lr 0
    (warm-up), its second puts 1e30 into the weights, still a finite loss; the third is NaN."""
    cfg = load_config("smoke", sets=["save_every=1", "eval_samples=0", "stages.II-fixed.lr.llm=1e30"])
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=r"loss nan.*Last good checkpoint: .*step-0000004 .*"
                                                 r"set aside as poisoned-step-0000005"):
        mtrain.train(cfg, out, progress=False)
    from safetensors.torch import load_file
    good = load_file(str(mtrain.checkpoints(out)[-1] / "model.safetensors"))
    assert max(float(v.abs().max()) for v in good.values()) < 1e3
    bad = load_file(str(out / "checkpoints" / "poisoned-step-0000005" / "model.safetensors"))
    assert max(float(v.abs().max()) for v in bad.values()) > 1e29


def test_weights_that_are_not_finite_are_never_saved(tmp_path, monkeypatch):
    import minicomp.checkpoint as mckpt
    real = mckpt.nonfinite_state
    calls = [0]

    def inf_at_third_save(model, opt):
        calls[0] += 1
        if calls[0] == 3:
            next(model.merger.parameters()).data.fill_(float("inf"))
        return real(model, opt)

    monkeypatch.setattr(mloop, "nonfinite_state", inf_at_third_save)
    cfg = load_config("smoke", sets=["save_every=1", "eval_samples=0"])
    with pytest.raises(FloatingPointError, match=r"step 3: not finite after the update: merger\..*not saved"):
        mtrain.train(cfg, tmp_path / "run", progress=False)
    assert [c.name for c in mtrain.checkpoints(tmp_path / "run")] == ["step-0000001", "step-0000002"]


@pytest.mark.parametrize("tear", ["model", "meta"])
def test_resume_passes_over_a_torn_checkpoint_and_a_torn_metrics_line(stopped_run, tmp_path, capsys, tear):
    src, cfg = stopped_run
    out = _copy(src, tmp_path / "run")
    newest = mtrain.checkpoints(out)[-1]
    if tear == "model":
        with open(newest / "model.safetensors", "r+b") as fh:
            fh.truncate(100)
    else:
        (newest / "meta.json").write_text("")
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"stage": "II-fixed", "global_st')  # a kill mid-write
    meta = mtrain.train(cfg, out, resume=True, stop_after=1, progress=False)
    said = capsys.readouterr()
    assert "passed over" in said.out + said.err and newest.name in said.out + said.err
    assert meta["global_step"] == 5  # from step 4, the newest usable checkpoint, one more step
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in rows] == [1, 2, 3, 4, 5]


def test_a_fresh_run_does_not_append_to_old_metrics(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"stage": "I", "step": 1, "global_step": 1, "loss": 99}\n{"tor')
    cfg = load_config("smoke", sets=["eval_samples=0"])
    mtrain.train(cfg, out, stop_after=2, progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in rows] == [1, 2] and rows[0]["loss"] != 99


def test_resume_command_line_has_force():
    assert "--force" in mtrain.parser().format_help()


class _Rank:
    """Two ranks as threads: just what `save_checkpoint` asks of an accelerator. Rank 1 writes its state
    late, as a slower process does."""

    def __init__(self, index: int, barrier):
        self.process_index, self.is_main_process, self._barrier = index, index == 0, barrier

    def wait_for_everyone(self):
        self._barrier.wait(timeout=30)

    def save_state(self, folder: str):
        import time
        time.sleep(0.3 * self.process_index)
        (Path(folder) / f"rng-{self.process_index}.pt").write_bytes(b"x")

    def get_state_dict(self, model):
        import torch
        return {"w": torch.ones(2)}


def test_a_checkpoint_is_renamed_only_after_every_rank_wrote_into_it(tmp_path):
    """The DDP race that a suite's log showed: the main process renamed the checkpoint folder while a
    slower rank was still writing its state into it (the barrier before the rename fixes it)."""
    import threading

    from minicomp.checkpoint import checkpoints, save_checkpoint
    barrier, errors, done = threading.Barrier(2), [], []

    def rank(i):
        try:
            done.append(save_checkpoint(_Rank(i, barrier), None, tmp_path, {"global_step": 5}, keep=2))
        except Exception as e:  # noqa: BLE001 - reported below, with its rank
            errors.append(f"rank {i}: {e!r}")
            barrier.abort()

    threads = [threading.Thread(target=rank, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    final = checkpoints(tmp_path)[-1]
    assert {p.name for p in (final / "state").iterdir()} == {"rng-0.pt", "rng-1.pt"}
    assert (final / "meta.json").is_file() and not list((tmp_path / "checkpoints").glob(".tmp-*"))
