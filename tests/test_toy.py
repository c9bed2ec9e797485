import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM

from minicomp.cli import main
from minicomp.data import make_sample, resize_fixed, to_tensor
from minicomp.toy import TOY_LLM_PATH, TOY_VFM_PATHS, probes
from minicomp.toy.build import build_toy_models
from minicomp.toy.llm import _stream, corpus_digest, evaluate, tokenizer_corpus, toy_texts
from minicomp.toy.tokenizer import build_tokenizer
from minicomp.toy.probes import (attentive_probe_accuracy, encode, patch_features, patch_probes, probe_accuracy,
                                  probe_pixels)
from minicomp.toy.vfm import (ATTRIBUTES, attribute, build_toy_vfm, create_toy_vit, glyph_crops, measure_probes,
                              pooled_features, probe_images)


def test_shipped_toy_llm_loads_like_a_hub_model_and_is_trained():
    model = AutoModelForCausalLM.from_pretrained(TOY_LLM_PATH)  # the same call as for "Qwen/Qwen2.5-0.5B"
    tok = AutoTokenizer.from_pretrained(TOY_LLM_PATH)
    assert isinstance(model, Qwen2ForCausalLM) and model.config.vocab_size == len(tok)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == \
        "<|im_start|>user\nhi<|im_end|>\n"
    log = json.loads((TOY_LLM_PATH / "build_log.json").read_text())
    assert log["val_loss"] < log["val_loss_before"] - 3  # it learned the toy world's text
    # recompute on held-out text: the shipped weights give the logged quality, not a random model's
    loss = evaluate(model, _stream(tok, toy_texts("val", 40)), seq_len=256)
    assert loss < log["val_loss"] + 0.5 and loss < log["val_loss_before"] - 3


def test_the_shipped_toy_llm_was_built_on_todays_world():
    train = toy_texts("train", 6000)  # build_toy_llm's defaults
    tok = build_tokenizer(tokenizer_corpus(train), vocab_size=2048)
    shipped = json.loads((TOY_LLM_PATH / "tokenizer.json").read_text())
    assert json.loads(tok.backend_tokenizer.to_str())["model"] == shipped["model"]


def test_toy_build_from_scratch_smoke(tmp_path, monkeypatch):
    shipped = (TOY_LLM_PATH / "model.safetensors").read_bytes()
    assert main(["toy", "build", "--out", str(tmp_path), "--only", "llm", "--steps", "3"]) == 0
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # without --out: ./toy-build, never the shipped models
    assert main(["toy", "build", "--only", "llm", "--steps", "3", "--jobs", "1"]) == 0
    assert (TOY_LLM_PATH / "model.safetensors").read_bytes() == shipped
    default = tmp_path / "cwd" / "toy-build"
    for f in ("model.safetensors", "tokenizer.json"):  # bit-reproducible, whatever --jobs
        assert (tmp_path / "llm" / f).read_bytes() == (default / "llm" / f).read_bytes(), f
    log = json.loads((tmp_path / "llm" / "build_log.json").read_text())
    assert log["steps"] == 3 and log["val_loss"] < log["val_loss_before"]
    again = json.loads((default / "llm" / "build_log.json").read_text())
    assert log["corpus_sha256"] == again["corpus_sha256"] == corpus_digest(toy_texts("train", 6000))  # what it read
    assert log["libraries"]["torch"] == torch.__version__.split("+")[0]
    assert log["threads"] == 1  # each build single-threaded: its bits do not depend on the machine's cores
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "llm")
    x = torch.tensor([[1, 2, 3]])
    for bad, says in (({"only": ["dino"]}, "only="), ({"jobs": 0}, "jobs=")):
        with pytest.raises(ValueError, match=says):
            list(build_toy_models(tmp_path / "bad", **bad))
    assert model(input_ids=x).logits.shape == (1, 3, model.config.vocab_size)


# ---- toy VFMs -------------------------------------------------------------------------------


def test_attributes_by_hand():
    chart = {"family": "chart", "labels": ["A", "B", "C", "D", "E", "F"], "lengths": [5, 9, 1, 2, 80, 3]}
    assert list(ATTRIBUTES) == ["family", "count", "left_colour", "longest_third", "title", "longest_label"]
    assert [attribute(chart, a) for a in ATTRIBUTES] == [1, 6, -1, 2, -1, 4]  # longest: bar 5 of 6, "E"
    scene = {"family": "scene", "objects": [{"color": "blue"}, {"color": "red"}]}
    assert [attribute(scene, a) for a in ATTRIBUTES] == [2, 2, 2, -1, -1, -1]  # blue is colour 2
    doc = {"family": "document", "lines": ["omega", "x y", "z"]}
    assert [attribute(doc, a) for a in ATTRIBUTES] == [0, 3, -1, -1, 4, -1]  # omega is word 4
    with pytest.raises(ValueError, match="'size'"):
        attribute(doc, "size")


def test_probes_recover_a_planted_signal_and_not_random_labels():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (600,), generator=g)
    x = torch.randn(600, 32, generator=g)
    x[:, :5] += 4.0 * torch.nn.functional.one_hot(y, 5)  # the class, planted in five of 32 features
    shuffled = y[torch.randperm(600, generator=g)]  # labels that carry no signal
    labels = torch.stack([y, shuffled], 1).repeat(1, 3)[:, :len(ATTRIBUTES)]  # (600, A)
    acc = probe_accuracy(x[:400], labels[:400], x[400:], labels[400:])
    assert acc["family"] > 0.9  # planted: found
    assert abs(acc["count"] - 0.2) < 0.1  # random labels: chance (1/5), not more
    tokens = [x[i:i + 1].repeat(4, 1) + 0.1 * torch.randn(4, 32, generator=g) for i in range(600)]  # 4 tokens each
    att = attentive_probe_accuracy(tokens[:400], labels[:400], tokens[400:], labels[400:], steps=100)
    assert att["family"] > 0.9 and abs(att["count"] - 0.2) < 0.1  # the attentive probe too


def test_pooled_features_equal_timm_at_the_pretraining_resolution():
    torch.manual_seed(0)
    for kind in ("vision", "siglip"):
        vit = create_toy_vit(kind).eval()
        x = torch.randn(3, 3, 64, 64)
        ref = vit.forward_head(vit.forward_features(x), pre_logits=True)  # timm's own pooled embedding
        torch.testing.assert_close(pooled_features(vit, list(x)), ref, atol=1e-5, rtol=1e-5)
        ref_tokens = vit.forward_features(x)[:, vit.num_prefix_tokens:]  # (3, 64, D) timm's patch tokens
        torch.testing.assert_close(torch.stack(patch_features(vit, list(x))), ref_tokens, atol=1e-5, rtol=1e-5)


def test_patch_probes_on_given_features_equal_those_they_compute():
    """measure_probes runs one forward per split and hands its patch tokens to patch_probes."""
    vit = create_toy_vit("vision").eval()
    train, test = probe_images("train", 12), probe_images("test", 8)
    pixels = [[to_tensor(resize_fixed(im, 64), vit.pretrained_cfg["mean"], vit.pretrained_cfg["std"]) for im in imgs]
              for imgs, _, _ in (train, test)]
    assert all(torch.equal(a, b) for px, (imgs, _, _) in zip(pixels, (train, test))
               for a, b in zip(px, probe_pixels(vit, imgs, 64)))  # what every probe feeds the ViT
    given = tuple(encode(vit, px)[1] for px in pixels)
    assert patch_probes(vit, train, test, features=given) == patch_probes(vit, train, test)


@pytest.mark.parametrize("kind", ["vision", "siglip"])
def test_shipped_toy_vfm_loads_like_a_hub_model_and_is_trained(kind):
    vit = timm.create_model(f"local-dir:{TOY_VFM_PATHS[kind]}", pretrained=True).eval()  # as "hf-hub:timm/..."
    assert vit.pretrained_cfg["input_size"] == (3, 64, 64) and isinstance(vit.pos_embed, torch.nn.Parameter)
    assert vit.num_prefix_tokens == (1 if kind == "vision" else 0)
    log = json.loads((TOY_VFM_PATHS[kind] / "build_log.json").read_text())
    fixed, native = log["probes"]["fixed 64px"], log["probes"]["native <=256 patches"]
    rnd = log["probes_random_init"]["fixed 64px"]
    if kind == "vision":  # supervised on layout: its probes at 64 px beat random weights
        assert fixed["mean"] > rnd["mean"] + 0.03
    else:  # learned its contrastive task: chance is 0.01
        assert log["retrieval_top1_of_100"] > 0.08
    assert native["glyph"] > fixed["glyph"] + 0.1  # glyphs are legible at the native budget, not at 64 px
    if kind == "vision":  # its crops taught it to read (siglip's bag of characters did not: README)
        assert native["glyph"] > log["probes_random_init"]["native <=256 patches"]["glyph"] + 0.3
        crops = log["probes"]["crops 64px"]  # reading at its own 64 px, glyphs at the native scale
        assert crops["glyph"] > log["probes_random_init"]["crops 64px"]["glyph"] + 0.3
        assert native["title"] > log["probes_random_init"]["native <=256 patches"]["title"] + 0.1  # the big title
        assert fixed["count"] - native["count"] > 0.15  # layout degrades at native with APE interpolation alone
    # recompute on fresh held-out samples: the shipped weights give the logged quality
    train, test = probe_images("train", 600, seed=5), probe_images("test", 300, seed=5)
    acc = measure_probes(vit, train, test, glyphs=False)
    assert acc["family"] > 0.9 and acc["mean"] > fixed["mean"] - 0.08


def test_glyph_crops_hold_glyphs_with_their_patch_labels():
    crops, labels, texts = glyph_crops("train", 6)
    assert crops.shape == (6, 3, 64, 64) and crops.dtype == torch.uint8 and labels.shape == (6, 2, 8, 8)
    for c, (glyph, word), t in zip(crops, labels, texts):
        assert (glyph >= 0).any() and len(t.split()) == int((glyph >= 0).sum())  # each crop shows a glyph
        ink = (c.float().mean(0) < 128).view(8, 8, 8, 8).permute(0, 2, 1, 3).any(-1).any(-1)  # (8, 8) dark pixels
        assert ink[glyph >= 0].all()  # a patch with a glyph's centre has ink in it
        assert (word >= 0).any() and (word[glyph >= 0] >= 0).float().mean() > 0.5  # glyphs lie in words


def test_build_toy_vfm_smoke(tmp_path, monkeypatch):
    monkeypatch.setattr(probes, "PROBE_STEPS", 10)  # the build's plumbing, not its probes' fit (200 by default)
    for kind in ("vision", "siglip"):
        log = build_toy_vfm(kind, tmp_path / kind, tokenizer=TOY_LLM_PATH, steps=2, batch=8, n_train=24,
                            n_probe=30, n_test=30)
        assert log["steps"] == 2 and 0 <= log["probes"]["fixed 64px"]["mean"] <= 1
        vit = timm.create_model(f"local-dir:{tmp_path / kind}", pretrained=True).eval()
        img = to_tensor(resize_fixed(make_sample(0, "test", 0).image, 64), vit.pretrained_cfg["mean"],
                        vit.pretrained_cfg["std"])
        assert torch.isfinite(vit(img[None])).all()
        build_toy_vfm(kind, tmp_path / f"{kind}-again", tokenizer=TOY_LLM_PATH, steps=2, batch=8, n_train=24,
                      n_probe=30, n_test=30)  # bit-reproducible
        assert (tmp_path / kind / "model.safetensors").read_bytes() == \
            (tmp_path / f"{kind}-again" / "model.safetensors").read_bytes()
        again = json.loads((tmp_path / f"{kind}-again" / "build_log.json").read_text())
        assert log["images_sha256"] == again["images_sha256"] and set(log["libraries"]) >= {"pillow", "timm", "torch"}
    with pytest.raises(ValueError, match="tokenizer"):
        build_toy_vfm("siglip", tmp_path / "x", tokenizer=None, steps=1, n_train=8)
    with pytest.raises(ValueError, match="kind"):
        create_toy_vit("dino")


def test_the_title_can_be_read_off_the_llms_input():
    """`minicomp eval --only llm_input`: the shipped VFM, through an untrained merger, already hands
    the LLM a readable title in the first merged tokens (the title is set large, top left), and
    less of it in their mean: reading is the LLM's job, the information is there."""
    from minicomp.assess import llm_input_probe
    import minicomp as mc

    r = llm_input_probe(mc.CoMPModel.from_preset("tiny").eval(), (200, 100))
    assert r["first"] > 0.6 > r["chance"] and r["first"] > r["mean"] + 0.2 and r["n_test"] == 100


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_toy_build_processes_die_with_the_command(tmp_path):
    """SIGKILL to `minicomp toy build` leaves no build process running on into the folder."""
    cmd = [sys.executable, "-m", "minicomp.cli", "toy", "build", "--out", str(tmp_path), "--only", "llm", "vision"]
    log = tmp_path / "stderr.txt"
    with log.open("w") as err:
        parent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)

    def children() -> set[int]:
        kids = set()
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            except OSError:
                continue  # gone meanwhile
            if int(fields.get("PPid", "0")) == parent.pid:
                kids.add(int(status.parent.name))
        return kids

    deadline = time.time() + 300
    while not all(bar in log.read_text() for bar in ("toy LLM", "render train")) and time.time() < deadline:
        time.sleep(0.5)  # both builds are past their start-up: each has drawn its first progress bar
    kids = children()
    assert len(kids) >= 2, f"the build processes never started: {log.read_text()[-2000:]}"
    parent.kill()
    parent.wait()
    deadline = time.time() + 30

    def alive(pid: int) -> bool:
        try:
            return "\tZ" not in Path(f"/proc/{pid}/status").read_text().split("State:")[1][:4]
        except (OSError, IndexError):
            return False

    while any(alive(pid) for pid in kids) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in kids)
    assert not (tmp_path / "vision" / "model.safetensors").exists()


def test_the_toy_paths_name_every_toy_vfm():
    """`minicomp.toy` writes its VFM kinds out, so that loading a preset's paths imports no timm."""
    from minicomp.toy import TOY_VFMS
    assert set(TOY_VFM_PATHS) == set(TOY_VFMS) and all((p / "config.json").is_file() for p in TOY_VFM_PATHS.values())
