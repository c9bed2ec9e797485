"""`minicomp` console entry point."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="minicomp", description="CoMP reference implementation")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="encode native-resolution images with C-RoPE and print what happened")
    demo.add_argument("--model", default="vit_base_patch16_siglip_224", help="any timm ViT with a learned APE")
    demo.add_argument("--depth", type=int, default=None, help="override the number of blocks (faster on CPU)")
    demo.add_argument("--pretrained", action="store_true", help="load the model's weights from the hub")
    demo.add_argument("--checkpoint", default=None, help="load weights from a local file instead")
    demo.add_argument("--rope-theta", type=float, default=10000.0)
    args = parser.parse_args(argv)

    if args.command == "demo":
        from .demo import run_demo
        run_demo(args.model, args.depth, args.pretrained, args.checkpoint, args.rope_theta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
