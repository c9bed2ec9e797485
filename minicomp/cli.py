"""`minicomp` console entry point."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    import math
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return v


def main(argv: list[str] | None = None) -> int:
    from .environment import flush_denormals
    flush_denormals()  # first: the threads started later take its float mode
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:  # the main job has its own options (minicomp train --help)
        from .train import main as train_main
        return train_main(argv[1:])
    parser = argparse.ArgumentParser(prog="minicomp", description="CoMP reference implementation")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="run the three-stage CoMP recipe (the main job): minicomp train --preset tiny")
    demo = sub.add_parser("demo", help="encode native-resolution images with C-RoPE and print what happened")
    demo.add_argument("--model", default="vit_base_patch16_siglip_224", help="any timm ViT with a learned APE")
    demo.add_argument("--depth", type=int, default=None, help="override the number of blocks (faster on CPU)")
    demo.add_argument("--pretrained", action="store_true", help="load the model's weights from the hub")
    demo.add_argument("--checkpoint", default=None, help="load weights from a local file instead")
    demo.add_argument("--rope-theta", type=_positive_float, default=10000.0)
    prior = sub.add_parser("prior", help="count the tokens of a caption set, for the word prior of Eq. 9")
    prior.add_argument("--tokenizer", required=True, help="a transformers tokenizer: model id or local directory")
    src = prior.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="a LLaVA-format .json/.jsonl file (its assistant turns are the captions)")
    src.add_argument("--synthetic", type=_positive_int, metavar="N", help="the first N toy-world training captions")
    prior.add_argument("--image-root", default=None, help="image folder of --data (records are validated)")
    prior.add_argument("--out", required=True, help="output .safetensors file with a `counts` tensor")
    prior.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    ev = sub.add_parser("eval", help="evaluate a trained model: exact match with controls, resolution sweep, VFM probes")
    ev.add_argument("path", help="a run directory (minicomp train --out) or a saved CoMPModel folder")
    ev.add_argument("--only", nargs="+", choices=("qa", "sweep", "probes", "llm_input"), default=None,
                    help="run only these parts")
    ev.add_argument("--samples", type=int, default=150, help="test samples (two questions each)")
    ev.add_argument("--max-tokens", type=int, default=64, help="the model's own native budget (merged tokens)")
    ev.add_argument("--budgets", type=int, nargs="+", default=[16, 32, 64, 128, 256], help="native budgets of the sweep")
    ev.add_argument("--probe-images", type=int, nargs=2, default=[600, 300], metavar=("TRAIN", "TEST"),
                    help="images the VFM probes are fitted and tested on")
    ev.add_argument("--probe-steps", type=int, default=300, help="optimiser steps of each attentive probe")
    ev.add_argument("--out", default=None, help="output folder (default: the run directory)")
    ask = sub.add_parser("ask", help="ask a trained model one question about one image file")
    ask.add_argument("model", help="a run directory or a saved CoMPModel folder")
    ask.add_argument("image", help="an image file")
    ask.add_argument("question")
    ask.add_argument("--max-tokens", type=int, default=64, help="native budget (merged visual tokens)")
    ask.add_argument("--fixed-size", type=int, default=None, help="squash to this square instead")
    data = sub.add_parser("data", help="paper-scale data: index a LLaVA file once, then open it in constant time")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    idx = data_sub.add_parser("index", help="validate every record once (in parallel) and write a memory-mapped index")
    idx.add_argument("file", help="a LLaVA .json or .jsonl file")
    idx.add_argument("--image-root", default=None, help="the folder its image paths are relative to")
    idx.add_argument("--out", required=True, help="the index folder; use it as a data `path` (image_root not needed)")
    idx.add_argument("--workers", type=int, default=None, help="validating processes (default: the cores, at most 8)")
    idx.add_argument("--strict", action="store_true", help="stop at the first bad record, naming it")
    idx.add_argument("--force", action="store_true", help="overwrite an existing index folder")
    conv = sub.add_parser("convert", help="convert the authors' released CoMP-SigLIP / CoMP-DINOv2 into a CRoPEViT "
                                          "folder, or a whole CoMP-MM model into a CoMPModel folder")
    conv.add_argument("src", help="their checkpoint folder (config.json + *.safetensors or pytorch_model*.bin)")
    conv.add_argument("out", help="output folder: a VFM (timm config.json + model.safetensors, crope.json, merger.*) "
                                  "or, for CoMP-MM, a CoMPModel folder (minicomp ask / CoMPModel.from_pretrained)")
    conv.add_argument("--vision-config", default=None,
                      help="CoMP-MM only: the folder of the VFM its config.json names as custom_visual_model "
                           "(its config.json describes the vision tower)")
    conv.add_argument("--layout", choices=("comp-siglip", "comp-dinov2"), default=None,
                      help="the key layout (default: detected from the keys)")
    conv.add_argument("--force", action="store_true", help="overwrite an existing output folder")
    rep = sub.add_parser("reproduce", help="run the paper's ablations on the toy world: Tab. 3, 4, 5a, 5b, Fig. 3")
    rep.add_argument("tables", nargs="*", help="tab3, tab4, tab5a, tab5b, fig3 or all")
    rep.add_argument("--list", action="store_true", help="print every row's exact overrides and stop")
    rep.add_argument("--seeds", type=_positive_int, default=3, help="seeds per row (0, 1, …)")
    rep.add_argument("--out", default="reproduce", help="results, cache, runs and the tables (default reproduce/)")
    rep.add_argument("--preset", default="tiny", help="the recipe every row changes (tiny; tiny-short: an eighth of its steps; "
                          "smoke: a quick check of the path)")
    rep.add_argument("--procs", type=_positive_int, default=None,
                     help="training processes per run (default: as many as the cores allow, as minicomp train)")
    rep.add_argument("--against", metavar="DIR", default=None,
                     help="then compare the effects resolved in --out's tables with those in DIR's (another suite, "
                          "e.g. the full recipe's); writes OUT/compare.md and .json. Without tables: compare only")
    toy = sub.add_parser("toy", help="the toy world's models")
    toy_sub = toy.add_subparsers(dest="toy_command", required=True)
    world = toy_sub.add_parser("world", help="the toy world in numbers: chance levels, glyph sizes at each resolution")
    world.add_argument("--samples", type=int, default=300, help="documents and charts measured (each)")
    build = toy_sub.add_parser("build", help="rebuild the toy LLM and both toy VFMs from scratch (~10 min on 2 cores)")
    build.add_argument("--out", default="toy-build",
                       help="output folder (default: ./toy-build). The shipped models, which every toy number "
                            "was measured with, are replaced only when this names their folder, minicomp/toy/checkpoints")
    build.add_argument("--only", choices=("llm", "vision", "siglip"), nargs="+", default=None,
                       help="rebuild only these (siglip needs the LLM's tokenizer in --out or the shipped one)")
    build.add_argument("--jobs", type=_positive_int, default=None,
                       help="builds at once, each in its own single-threaded process (default: 2 where there are "
                            "2 cores); it changes the time, never the bits")
    build.add_argument("--steps", type=_positive_int, default=400, help="LLM pretraining steps (the shipped LLM: 600)")
    build.add_argument("--vfm-steps", type=_positive_int, default=None,
                       help="pretraining steps of each toy VFM (default: 1200 for vision, 800 for siglip; "
                            "the shipped vision VFM: 2400)")
    build.add_argument("--vfm-lr", type=float, default=None,
                       help="peak learning rate of each toy VFM (default: 2e-3 for vision, 1e-3 for siglip; "
                            "the shipped vision VFM: 1e-3)")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from .demo import run_demo
        run_demo(args.model, args.depth, args.pretrained, args.checkpoint, args.rope_theta)
    elif args.command == "prior":
        if Path(args.out).exists() and not args.force:
            parser.exit(2, f"minicomp prior: error: {args.out} exists; pass --force to overwrite it\n")
        looks_local = args.tokenizer.startswith((".", "/", "~")) or Path(args.tokenizer).exists()
        if looks_local and not Path(args.tokenizer).expanduser().is_dir():
            parser.exit(2, f"minicomp prior: error: --tokenizer {args.tokenizer}: no such folder\n")
        _prior(args)
    elif args.command == "toy" and args.toy_command == "world":
        _toy_world(args)
    elif args.command == "toy":
        _toy_build(args)
    elif args.command == "eval":
        from .assess import PARTS, assess
        try:
            r = assess(args.path, tuple(args.only or PARTS), n=args.samples, max_tokens=args.max_tokens,
                       budgets=tuple(args.budgets), probe_images=tuple(args.probe_images),
                       probe_steps=args.probe_steps, out=args.out)
        except (FileNotFoundError, ValueError) as e:
            parser.exit(2, f"minicomp eval: error: {e}\n")
        print(Path(r["out"], "eval.md").read_text() + f"\nwrote eval.json, eval.md and figures to {r['out']}")
    elif args.command == "data":
        from .data.index import META, build_index
        if (Path(args.out) / META).exists() and not args.force:
            parser.exit(2, f"minicomp data index: error: {args.out} holds an index; pass --force to overwrite it\n")
        try:
            meta = build_index(args.file, args.out, args.image_root, args.workers, args.strict)
        except (FileNotFoundError, ValueError) as e:
            parser.exit(2, f"minicomp data index: error: {e}\n")
        print(f"indexed {meta['read']:,} records of {args.file}: kept {meta['kept']:,}, skipped "
              f"{sum(meta['skipped'].values()):,} {meta['skipped'] or ''} -> {args.out} (use it as the data path)")
    elif args.command == "convert":
        from .convert import convert, read_checkpoint, save
        if Path(args.out).exists() and not args.force:
            parser.exit(2, f"minicomp convert: error: {args.out} exists; pass --force to overwrite it\n")
        src_config = Path(args.src) / "config.json"
        if src_config.is_file() and "vocab_size" in json.loads(src_config.read_text()):  # an LLM: a whole CoMP-MM
            from .convert_mm import convert_comp_mm
            try:
                model = convert_comp_mm(args.src, args.vision_config)
            except (FileNotFoundError, ValueError) as e:
                parser.exit(2, f"minicomp convert: error: {e}\n")
            model.save_pretrained(args.out)
            n = sum(p.numel() for p in model.parameters())
            print(f"converted {args.src} -> {args.out}: CoMPModel {n / 1e6:.1f}M parameters (positions "
                  f"{model.config.positions}, vocabulary {model.llm.get_input_embeddings().num_embeddings:,})")
            return 0
        try:
            enc, merger = convert(*read_checkpoint(args.src), layout=args.layout)
        except (FileNotFoundError, ValueError) as e:
            parser.exit(2, f"minicomp convert: error: {e}\n")
        save(enc, merger, args.out)
        n = sum(p.numel() for p in enc.parameters())
        print(f"converted {args.src} -> {args.out}: CRoPEViT {n / 1e6:.1f}M parameters, {len(enc.blocks)} blocks, "
              f"settings {enc.settings()}" + (f"; merger {merger.vision_dim}x{merger.merge}² -> {merger.llm_dim}"
                                              if merger else "; no merger in the checkpoint"))
    elif args.command == "reproduce":
        from .reproduce import NAMES, list_rows, reproduce
        try:
            if args.list:
                print(list_rows(args.preset))
                return 0
            if not args.tables and not args.against:
                parser.exit(2, f"minicomp reproduce: error: name a table ({', '.join(NAMES)}) or all, "
                               "or pass --list or --against\n")
            command = "minicomp reproduce " + " ".join(argv[1:])
            written = reproduce(args.tables, args.seeds, args.out, args.preset, args.procs,
                                command=command) if args.tables else []
            if args.against:
                from .reproduce.compare import write_comparison
                written += write_comparison(args.out, args.against, args.tables, command)
        except ValueError as e:
            parser.exit(2, f"minicomp reproduce: error: {e}\n")
        except RuntimeError as e:  # a run that failed: its log's tail; finished runs are kept, a rerun resumes
            parser.exit(1, f"minicomp reproduce: {e}\nFinished runs are kept; the same command resumes.\n")
        for path in written:
            if path.suffix == ".md":
                print(path.read_text())
        print("wrote " + ", ".join(str(p) for p in written))
    elif args.command == "ask":
        from .assess import ask as ask_one
        try:
            print(ask_one(args.model, args.image, args.question, max_tokens=args.max_tokens,
                          fixed_size=args.fixed_size))
        except (FileNotFoundError, ValueError) as e:
            parser.exit(2, f"minicomp ask: error: {e}\n")
    return 0

def _toy_build(args) -> None:

    import time

    from .toy.build import build_toy_models

    t0 = time.time()
    out = Path(args.out)
    for kind, log in build_toy_models(out, args.only, args.jobs, args.steps, args.vfm_steps, args.vfm_lr):
        if kind == "llm":
            print(f"toy LLM: {log['parameters']:,} parameters, vocabulary {log['vocab_size']:,}, "
                  f"validation loss {log['val_loss_before']:.2f} -> {log['val_loss']:.3f} "
                  f"(perplexity {log['val_perplexity']:.2f}) in {log['minutes']:.1f} min -> {out / 'llm'}")
            continue
        extra = (f"; zero-shot retrieval top-1 of 100: {log['retrieval_top1_of_100']:.2f}"
                 if "retrieval_top1_of_100" in log else "")
        print(f"toy VFM ({kind}): {log['parameters']:,} parameters, pretrained at {log['resolution']}px in "
              f"{log['minutes']:.1f} min -> {out / kind}{extra}")
        print(_probe_table(log))
    print(f"total {(time.time() - t0) / 60:.1f} min")


def _toy_world(args) -> None:
    from .data.labels import legibility
    from .data.synthetic import chance_levels

    print("chance level of each question kind (the best constant answer, scored on other samples):")
    for kind, c in chance_levels().items():
        print(f"  {kind:<16} {c:.3f}")
    leg = legibility(args.samples)
    print(f"\nmedian glyph height × width in 8-px patches, and the share of images with glyphs below half a "
          f"patch on an axis ({args.samples} documents, {args.samples} charts, val split):")
    for fam, rows in leg.items():
        for label, r in rows.items():
            print(f"  {fam:<9} {label:<19} {r['height']:.2f} × {r['width']:.2f}   below half: {r['below_half']:.2f}")


def _probe_table(log: dict) -> str:
    """The build log's probes as a text table: pretrained / random weights, per resolution."""
    res = list(log["probes"])
    keys = list(dict.fromkeys(k for r in res for k in log["probes"][r]))  # a crop column has the patch probes only

    def cell(r, k):
        if k not in log["probes"][r]:
            return f"{'–':>26}"
        return f"{log['probes'][r][k]:>13.2f} / {log['probes_random_init'][r][k]:.2f} (rnd)"
    rows = [f"  {'probe':<14}" + "".join(f"{r:>26}" for r in res)]
    rows += [f"  {k:<14}" + "".join(cell(r, k) for r in res) for k in keys]
    return "\n".join(rows)


def _prior(args) -> None:
    from transformers import AutoTokenizer

    from .data import LlavaDataset, SyntheticDataset
    from .data.prior import count_tokens, save_counts

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    if args.data:
        ds = LlavaDataset(args.data, image_root=args.image_root)
        texts = ("\n".join(t["value"] for t in conv if t["from"] == "gpt") for _, conv, _ in ds.items)
        n, skipped = len(ds), sum(ds.skipped.values())
    else:
        ds = SyntheticDataset("train", args.synthetic)
        texts = (ds[i].caption for i in range(len(ds)))
        n, skipped = len(ds), 0
    counts = count_tokens(texts, tokenizer, total=n)
    save_counts(counts, args.out)
    print(f"counted {int(counts.sum()):,} tokens of {n:,} captions ({skipped:,} records skipped) over a "
          f"vocabulary of {len(counts):,}; {int((counts > 0).sum()):,} distinct tokens -> {args.out}")


if __name__ == "__main__":
    sys.exit(main())
