import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM

from minicomp.cli import main
from minicomp.toy import TOY_LLM_PATH
from minicomp.toy.llm import _stream, evaluate, toy_texts


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


def test_toy_build_from_scratch_smoke(tmp_path):
    assert main(["toy", "build", "--out", str(tmp_path), "--steps", "3"]) == 0
    log = json.loads((tmp_path / "llm" / "build_log.json").read_text())
    assert log["steps"] == 3 and log["val_loss"] < log["val_loss_before"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "llm")
    x = torch.tensor([[1, 2, 3]])
    assert model(input_ids=x).logits.shape == (1, 3, model.config.vocab_size)
