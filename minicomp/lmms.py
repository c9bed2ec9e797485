"""A saved CoMPModel as an lmms-eval model, and the toy world as an lmms-eval task.

lmms-eval (`pip install -e ".[lmms]"`) is what the field and the authors' scripts use for ChartQA,
DocVQA, AI2D and the rest. minicomp registers its model through lmms-eval's entry points
(`pyproject.toml`, group `lmms_eval.models`), so that

    lmms-eval --model minicomp --model_args pretrained=runs/x/final --tasks chartqa,docvqa_val,ai2d

runs on any `minicomp train` output or saved CoMPModel folder. model_args: `pretrained` (a run
directory or a model folder), `max_tokens` (the native budget in merged tokens, default 3000),
`fixed_size` (a square instead), `batch_size` (default 8). Requests are answered greedily with
`CoMPModel.generate` and cut at the task's stop strings; the first image of a document is used
(the paper's benchmarks have one per question). Log-likelihood requests (multiple-choice scoring
by likelihood) are not implemented: the paper's benchmarks generate.

`write_toy_task(folder)` writes the toy world's held-out questions as a local lmms-eval task
(`--include_path folder --tasks minicomp_toy`), scored by exact match as `minicomp eval` scores it.
"""
from __future__ import annotations

import json
from pathlib import Path

from lmms_eval.api.model import lmms

from .assess import load_for_eval

TASK = "minicomp_toy"


def manifest():
    """The entry point lmms-eval reads: minicomp's model id and class."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="minicomp", simple_class_path="minicomp.lmms.MinicompLMM")


class MinicompLMM(lmms):
    """lmms-eval's model interface over `CoMPModel.generate`."""

    def __init__(self, pretrained: str, max_tokens: int = 3000, fixed_size: int | None = None, batch_size: int = 8,
                 **kwargs) -> None:
        super().__init__()
        unknown = sorted(k for k in kwargs if k not in ("device", "dtype"))  # lmms-eval passes these to every model
        if unknown:
            raise ValueError(f"minicomp: unknown model_args {unknown}; known: pretrained, max_tokens, fixed_size, "
                             f"batch_size")
        self.model = load_for_eval(pretrained)
        self.max_tokens, self.batch = int(max_tokens), int(batch_size)
        self.fixed_size = None if fixed_size in (None, "", "None") else int(fixed_size)

    def generate_until(self, requests) -> list[str]:
        out = []
        for start in range(0, len(requests), self.batch):
            chunk = [r.args for r in requests[start:start + self.batch]]
            images, prompts = [], []
            for context, gen_kwargs, doc_to_visual, doc_id, task, split in chunk:
                visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or [None]
                images.append(visuals[0].convert("RGB") if visuals[0] is not None else None)
                prompts.append(context)
            kw = chunk[0][1]  # one request's generation settings: greedy, as lmms-eval's tasks ask
            if kw.get("do_sample") or float(kw.get("temperature", 0) or 0) > 0:
                raise ValueError("minicomp answers greedily; the task asks for sampling")
            answers = self.model.generate(images, prompts, fixed_size=self.fixed_size, max_tokens=self.max_tokens,
                                          max_new_tokens=int(kw.get("max_new_tokens", 32)))
            for answer, (_, gen_kwargs, *_rest) in zip(answers, chunk):
                until = gen_kwargs.get("until") or []
                for stop in [until] if isinstance(until, str) else until:
                    answer = answer.split(stop)[0] if stop else answer
                out.append(answer)
        return out

    def loglikelihood(self, requests):
        raise NotImplementedError("minicomp does not score log-likelihood requests; the paper's benchmarks generate")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("minicomp answers one question per image")


_UTILS = '''"""The toy world's held-out questions for lmms-eval, scored by exact match (minicomp.lmms)."""


def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc):
    return doc["question"]


def process_results(doc, results):
    return {"exact_match": float(results[0].strip() == doc["answer"])}
'''


_YAML = """task: {task}
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {parquet}
test_split: test
output_type: generate_until
doc_to_visual: !function minicomp_toy_utils.doc_to_visual
doc_to_text: !function minicomp_toy_utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 6
  temperature: 0
  do_sample: false
process_results: !function minicomp_toy_utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  - version: 0.0
"""


def write_toy_task(folder: str | Path, n: int = 90, seed: int = 0) -> Path:
    """The questions `minicomp eval` asks (both questions of n test samples, in the same order) as
    a parquet file and an lmms-eval task folder: `--include_path <folder> --tasks minicomp_toy`."""
    import datasets

    from .data.synthetic import SyntheticDataset

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ds, rows = SyntheticDataset("test", n, seed=seed), []
    for i in range(n):
        s = ds[i]
        for j in range(0, len(s.conversations), 2):
            rows.append({"image": s.image, "question": s.conversations[j]["value"].replace("<image>\n", ""),
                         "answer": s.conversations[j + 1]["value"],
                         "kind": f"{s.meta['family']}/{s.meta['questions'][j // 2]}"})
    data = datasets.Dataset.from_list(rows, features=datasets.Features(
        {"image": datasets.Image(), "question": datasets.Value("string"), "answer": datasets.Value("string"),
         "kind": datasets.Value("string")}))
    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a file of a few hundred rows
    try:
        data.to_parquet(str(folder / f"{TASK}.parquet"))
    finally:
        if shown:
            datasets.enable_progress_bars()
    (folder / "minicomp_toy_utils.py").write_text(_UTILS)
    parquet = json.dumps(str((folder / f"{TASK}.parquet").resolve()))  # a quoted YAML string
    (folder / f"{TASK}.yaml").write_text(_YAML.format(task=TASK, parquet=parquet))
    return folder
