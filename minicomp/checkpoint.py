"""Checkpoints of a training run: written to a temporary folder and renamed when complete, so a
kill during a save never leaves a checkpoint that looks valid but is torn; only the newest
`keep` are kept. Each holds accelerate's state (optimiser, scheduler, RNG), the full weights
and a meta.json (stage, step, evaluations), written last."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from safetensors.torch import save_file


class _TiedWeightsNote(logging.Filter):
    """accelerate's `save_state` warns at every save that it stored a tied tensor once ("Removed
    shared tensor {'llm.lm_head.weight'}"). For an LLM with tied embeddings that is expected, and
    exact resume is tested, so the note is dropped; any other accelerate message still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_TiedWeightsNote())


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder counts only once renamed, with its meta.json)."""
    root = out / "checkpoints"
    done = [p for p in root.glob("step-*") if (p / "meta.json").is_file()] if root.is_dir() else []
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def save_model_state(state: dict, path: Path) -> None:
    """Weights to safetensors; a tensor shared by two names (tied embeddings) is stored once."""
    seen, out = set(), {}
    for k, v in state.items():
        key = (v.data_ptr(), v.shape, v.dtype) if v.device.type != "meta" else k
        if key not in seen:
            seen.add(key)
            out[k] = v.detach().cpu().contiguous()
    save_file(out, str(path))


def save_checkpoint(accelerator, model, out: Path, meta: dict, keep: int) -> Path:
    name = f"step-{meta['global_step']:07d}"
    final, tmp = out / "checkpoints" / name, out / "checkpoints" / f".tmp-{name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / "state"))  # optimiser, scheduler, RNG states (every rank)
    state = accelerator.get_state_dict(model)  # the full weights on the main process (gathers FSDP shards)
    if accelerator.is_main_process:
        save_model_state(state, tmp / "model.safetensors")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))  # written last: marks it complete
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in checkpoints(out)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
