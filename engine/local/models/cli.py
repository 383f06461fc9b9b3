"""`hotloop models build NAME`: build an embedded model and print its directory."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="embedded model name (tiny, small) or a local HF directory")


def main(args: argparse.Namespace) -> int:
    from engine.local.models import resolve_model

    print(resolve_model(args.name))
    return 0
