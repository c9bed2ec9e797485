"""The main job's command line: `minicomp train`, and `python -m minicomp.train` under a launcher.

    minicomp train --preset tiny                                   # the toy world, a few CPU minutes
    accelerate launch -m minicomp.train --preset paper-1b-siglip --data /data/llava   # the paper

On a CPU without a launcher it starts the processes itself (`minicomp.launch`: torchrun, DDP over
gloo, cores/procs threads each) before it imports the loop (`minicomp.loop`), so that the launching
process waits on its workers without paying their imports. `train` and `checkpoints` are the loop's,
importable from here as before.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from .config import PRESETS, RESUME_SAFE, TrainConfig, load_config, load_saved_config
from .environment import flush_denormals
from .launch import cpu_processes, die_with_launcher, launch

_FROM_LOOP = ("train", "checkpoints")


def __getattr__(name):  # `from minicomp.train import train` loads the loop on first use
    if name in _FROM_LOOP:
        from . import loop
        return getattr(loop, name)
    raise AttributeError(f"module 'minicomp.train' has no attribute {name!r}")


def parser() -> argparse.ArgumentParser:
    """The `minicomp train` command line."""
    ap = argparse.ArgumentParser(prog="minicomp train", description="Run CoMP's three-stage recipe.")
    ap.add_argument("--preset", default=None, choices=sorted(PRESETS),
                    help="the recipe (default tiny; with --resume, default: the run's saved config.json)")
    ap.add_argument("--config", action="append", default=[], help="a YAML file of overrides (repeatable)")
    ap.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                    help="override fields, e.g. --set stages.III.lr.llm=1e-5 seed=1 (repeatable)")
    ap.add_argument("--data", default=None, help="the folder that the preset's relative data paths are in")
    ap.add_argument("--out", default=None, help="run directory (default runs/<preset>)")
    ap.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    ap.add_argument("--force", action="store_true",
                    help=f"with --resume: let these fields differ from the saved config: {', '.join(RESUME_SAFE)}")
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps in all")
    ap.add_argument("--procs", default="auto",
                    help="CPU only: train with this many processes (DDP over gloo, launched here with torchrun), "
                         "each with cores/procs threads. auto: as many as the cores allow and the batch divides "
                         "(the toy's small ops use processes better than threads); 1: this process alone")
    return ap


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's config: the preset (default tiny), then --config files, then --set items. With
    --resume and no --preset, the run's saved config.json takes the preset's place."""
    saved = Path(args.out or "runs/tiny") / "config.json"
    if args.resume and args.preset is None and saved.is_file():  # continue the run as it was configured
        try:
            return load_saved_config(saved, args.config, args.set)
        except ValueError as e:
            raise SystemExit(f"--resume: {e}; name the run's --preset and overrides instead") from None
    return load_config(args.preset or "tiny", args.config, args.set)


def main(argv: list[str] | None = None) -> int:
    flush_denormals()  # first: the threads started later take its float mode (torchrun's workers start here)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    cfg = config_from_args(args)
    if "WORLD_SIZE" not in os.environ and not torch.cuda.is_available() and args.procs != "1":
        try:
            procs = cpu_processes(cfg, os.cpu_count() or 1) if args.procs == "auto" else int(args.procs)
        except ValueError:
            raise SystemExit(f"--procs {args.procs!r}: expected auto or a positive integer") from None
        if procs < 1:
            raise SystemExit(f"--procs {procs}: expected auto or a positive integer")
        if procs > 1:
            rest = [a for i, a in enumerate(argv) if a != "--procs" and (i == 0 or argv[i - 1] != "--procs")
                    and not a.startswith("--procs=")]
            return launch(rest, procs, cfg.parallel)
    die_with_launcher()
    from .loop import train  # here, not above: a launching process needs none of its imports

    out = Path(args.out or f"runs/{cfg.name}")
    t0 = time.time()
    meta = train(cfg, out, resume=args.resume, data_root=args.data, stop_after=args.max_steps, force=args.force)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if (out / "report.md").is_file():
        print((out / "report.md").read_text().split("![losses]")[0].strip())
    print(f"done in {(time.time() - t0) / 60:.1f} min; stages: "
          + ", ".join(f"{k} {v:.1f} min" for k, v in meta["stage_minutes"].items()) + f" -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
