"""`minicomp eval` and `minicomp ask`: what a trained model can do, measured or tried by hand.

`assess(path)` takes a run directory (its final `model/`) or a saved `CoMPModel` folder and runs:
- "qa": exact match per question kind at the model's own resolution, with the blank-image
  control, chance levels, Wilson intervals and n (`evaluate.with_control`);
- "sweep": the same at every native token budget of `budgets` and at fixed squares (the
  paper's Fig. 3, in miniature), real and blank in one figure;
- "probes": probes of the vision encoder's frozen features (`toy.probes`): attentive-pooling
  classification of the world's attributes, per-patch glyph and word recognition and
  segmentation, at the toy VFMs' own 64 px and at a native budget, for the original toy VFM and
  for this model's CoMP-trained one (the paper's Tab. 3, in miniature);
- "llm_input": what the LLM is given to read: linear probes of a document's title from the
  merged visual tokens that enter the LLM, their mean and the first few (the title's place),
  to set beside what the model answers.
It writes eval.json, eval.md and sweep.png to `out` (default: the path itself).
"""
from __future__ import annotations

import json
from pathlib import Path

from .evaluate import compare, resolution_sweep, with_control
from .model import CONFIG_FILE, CoMPModel

PARTS = ("qa", "sweep", "probes", "llm_input")


def resolve_model(path: str | Path) -> Path:
    """A saved CoMPModel folder: `path` itself, or `path`/model for a run directory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory (expected a run directory or a saved model)")
    for cand in (path, path / "model"):
        if (cand / CONFIG_FILE).is_file():
            if not (cand / "vision").is_dir():
                raise ValueError(f"{cand}: the model has no vision part (no vision/ folder); evaluation asks "
                                 "questions about images")
            return cand
    raise FileNotFoundError(f"{path}: neither a saved CoMPModel ({CONFIG_FILE}) nor a run directory with model/ "
                            "(run `minicomp train` first, or pass the folder written by save_pretrained)")


def load_for_eval(path: str | Path) -> CoMPModel:
    return CoMPModel.from_pretrained(resolve_model(path)).eval()


def ask(path: str | Path, image: str | Path, question: str, max_tokens: int = 64, fixed_size: int | None = None,
        max_new_tokens: int = 16) -> str:
    """The model's answer to one question about one image file, at native resolution within
    `max_tokens` merged tokens (or squashed to `fixed_size`)."""
    from .data.images import load_image

    src = resolve_model(path)  # the model first: it is the first argument
    image = Path(image)
    if not image.is_file():
        raise FileNotFoundError(f"{image}: no such image file")
    img = load_image(str(image))
    model = load_for_eval(src)
    return model.generate([img], [question], fixed_size=fixed_size, max_tokens=max_tokens,
                          max_new_tokens=max_new_tokens)[0]


def assess(path: str | Path, only: tuple[str, ...] = PARTS, n: int = 150, max_tokens: int = 64,
           budgets: tuple[int, ...] = (16, 32, 64, 128, 256), fixed: tuple[int, ...] = (64, 128),
           probe_images: tuple[int, int] = (600, 300), probe_steps: int = 300, out: str | Path | None = None) -> dict:
    """Run the parts in `only` on the model at `path`; write eval.json, eval.md (and sweep.png).
    `max_tokens`: the model's own native budget (the tiny preset trains at 64)."""
    bad = [p for p in only if p not in PARTS]
    if bad:
        raise ValueError(f"unknown evaluation part(s) {bad}, expected some of {PARTS}")
    src = resolve_model(path)
    out = Path(out) if out else (src.parent if src.name == "model" else src)
    out.mkdir(parents=True, exist_ok=True)
    model = load_for_eval(src)
    result: dict = {"model": str(src), "out": str(out), "n_samples": n}
    md = [f"# minicomp eval: {src}", ""]
    if "qa" in only:
        r = with_control(model, n, max_tokens=max_tokens, progress=True)
        result["qa"] = r
        from .report import kind_table
        md += [f"## Exact match at native ≤{max_tokens} tokens", "", kind_table(r), ""]
    if "sweep" in only:
        sizes = {f"fixed {s}px": {"fixed_size": s} for s in fixed}
        sizes.update({f"native ≤{b} tokens": {"max_tokens": b} for b in sorted({*budgets, max_tokens})})
        sweep = resolution_sweep(model, sizes, n, progress=True)
        result["sweep"] = sweep
        from .report import per_question_table, effect_lines
        from .viz.sweep import plot_sweep
        import matplotlib.pyplot as plt

        fig = plot_sweep(sweep, train_budget=max_tokens)
        fig.savefig(out / "sweep.png", dpi=110)
        plt.close(fig)
        md += ["## Resolution sweep" + per_question_table(list(sweep.items()), "Every resolution"), ""]
        own = sweep.get(f"native ≤{max_tokens} tokens")
        if own is not None and fixed:
            md += ["What it shows (paired over the same questions):", "",
                   *effect_lines(own, sweep[f"fixed {fixed[0]}px"], f"fixed {fixed[0]}px"), ""]
            result["native_vs_fixed"] = compare(own, sweep[f"fixed {fixed[0]}px"])
        md += ["![resolution sweep](sweep.png)", ""]
    if "probes" in only:
        result["probes"] = vfm_probes(model, probe_images, probe_steps)
        md += ["## Probes of the vision encoder (frozen features)", "", probe_table(result["probes"]), ""]
    if "llm_input" in only:
        r = result["llm_input"] = llm_input_probe(model, probe_images, max_tokens)
        md += [f"## What the LLM is given: a document's title from the merged tokens (native ≤{max_tokens} tokens)", "",
               "| features | test accuracy | chance |", "|---|---|---|",
               f"| mean of the merged tokens | {r['mean']:.2f} | {r['chance']:.2f} |",
               f"| the first {r['first_tokens']} merged tokens (the title's place) | {r['first']:.2f} | {r['chance']:.2f} |",
               "", f"({r['n_train']} training and {r['n_test']} test documents; logistic regression.)", ""]
    for v in _results(result):  # per-question lists make eval.json long; keep the summaries
        for k in ("hits", "kinds", "answers"):
            v.pop(k, None)
    (out / "eval.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "eval.md").write_text("\n".join(md) + "\n")
    return result


def _results(result: dict):
    for key in ("qa",):
        if key in result:
            yield result[key]
            yield result[key]["blank"]
    for v in result.get("sweep", {}).values():
        yield v
        yield v["blank"]


def vfm_probes(model: CoMPModel, sizes: tuple[int, int] = (600, 300), steps: int = 300,
               which: tuple[str, ...] = ("original toy VFM", "CoMP-trained")) -> dict:
    """Probes (`toy.probes.measure_probes`) of the original toy VFM and of this model's vision
    encoder, frozen, at 64 px and at native ≤256 patches, with RoPE as each was trained:
    classification of each attribute with an attentive-pooling probe (`steps` AdamW steps), and
    per-patch linear probes for glyphs, words and segmentation. `which`: the encoders to probe."""
    import timm

    from .toy import TOY_VFM_PATHS
    from .toy.probes import NATIVE_PATCHES, measure_probes, probe_images

    encoders = {"original toy VFM": lambda: timm.create_model(f"local-dir:{TOY_VFM_PATHS[kind]}", pretrained=True).eval(),
                "CoMP-trained": lambda: model.vision}
    unknown = sorted(set(which) - set(encoders))
    if unknown:
        raise ValueError(f"which: unknown encoder(s) {unknown}; expected any of {sorted(encoders)}")
    kind = "siglip" if "siglip" in model.config.vision else "vision"
    train, test = probe_images("train", sizes[0], seed=11), probe_images("test", sizes[1], seed=11)
    out = {}
    for name, enc in ((n, encoders[n]()) for n in which):
        out[name] = {res: measure_probes(enc, train, test, size=size, attentive=True, attentive_steps=steps)
                     for res, size in (("fixed 64px", 64), (f"native <={NATIVE_PATCHES} patches", None))}
    return out


def llm_input_probe(model: CoMPModel, sizes: tuple[int, int] = (600, 300), max_tokens: int = 64,
                    first: int = 4, seed: int = 11) -> dict:
    """Can the title be read off the LLM's input? Logistic-regression probes of a document's
    title (16 words) on the merged visual tokens at native ≤`max_tokens`: their mean, and the
    first `first` tokens in raster order, where the top-left title lies. If these read the title
    and the model's answers do not, the bottleneck is the LLM's reading of its input, not the
    VFM's legibility. -> {"mean", "first": test accuracy, "chance", "first_tokens", "n_train", "n_test"}."""
    import torch

    from .data.resize import resize_to_budget, to_tensor
    from .data.synthetic import WORDS, make_sample
    from .toy.probes import fit_probe

    cfg, patch, merge = model.vision.pretrained_cfg, model.vision.patch_size, model.config.merge
    data = []
    for split, n in (("train", sizes[0]), ("test", sizes[1])):
        pooled, head, y = [], [], []
        with torch.no_grad():
            for i in range(n):
                s = make_sample(seed, split, i, family="document")
                img = resize_to_budget(s.image, patch, merge, first, max_tokens)  # at least `first` tokens
                t = model.encode_images([to_tensor(img, cfg["mean"], cfg["std"])]).split()[0]  # (N, D)
                pooled.append(t.mean(0))
                head.append(t[:first].flatten())  # (first * D,)
                y.append(WORDS.index(s.meta["lines"][0]))
        data.append((torch.stack(pooled), torch.stack(head), torch.tensor(y)))
    (p_tr, h_tr, y_tr), (p_te, h_te, y_te) = data
    acc = lambda tr, te: float((fit_probe(tr, y_tr)(te).argmax(1) == y_te).float().mean())
    return {"mean": acc(p_tr, p_te), "first": acc(h_tr, h_te), "chance": 1 / len(WORDS), "first_tokens": first,
            "n_train": sizes[0], "n_test": sizes[1]}


def probe_table(probes: dict) -> str:
    names = list(probes)
    res = list(probes[names[0]])
    keys = list(probes[names[0]][res[0]])
    head = "| probe | " + " | ".join(f"{n}, {r}" for n in names for r in res) + " |"
    rows = [head, "|---|" + "---|" * (len(names) * len(res))]
    for k in keys:
        rows.append(f"| {k} | " + " | ".join(f"{probes[n][r][k]:.2f}" for n in names for r in res) + " |")
    return "\n".join(rows)
