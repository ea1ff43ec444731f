"""The `quanta` command line: `quantize`, `eval`, `info` and `export` for Transformers model
folders."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# The names `--weights`, `--activations` and `--activations-mode` accept, written out so that the
# parser (and `quanta --help`) needs no torch import; test_cli checks them against quanta.qtypes.
WEIGHT_QTYPES = (
    *("e4m3", "e5m2", "float8", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "fp4"),
    *("fp4_dq", "fp8", "fp8_e4m3fn", "fp8_e4m3fnuz", "fp8_e5m2", "int2", "int4", "int8"),
    *("mxfp4", "mxfp8", "nf4", "nf4_dq", "nvfp4", "qfloat8", "qfloat8_e4m3fn"),
    *("qfloat8_e4m3fnuz", "qfloat8_e5m2", "qfp4", "qfp4_dq", "qint2", "qint4", "qint8"),
    *("qmxfp4", "qmxfp8", "qnf4", "qnf4_dq", "qnvfp4"),
)
# activations take the 8-bit qtypes with one scale (int8, float8), not 2/4-bit or block formats
ACTIVATION_QTYPES = tuple(
    name
    for name in WEIGHT_QTYPES
    if not name.endswith(("int2", "int4", "fp4", "nf4", "_dq", "mxfp8"))
)
ACTIVATION_MODES = ("static", "dynamic")
# the file names from_pretrained reads weights from (transformers.utils' *WEIGHTS*_NAME)
WEIGHTS_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
QUANTA_SAVE_FILES = ("model.safetensors", "model.safetensors.index.json")
# the formats `quanta export` writes (quanta.qintegrations.export.FORMATS, checked by test_cli)
EXPORT_FORMATS = ("compressed-tensors", "gguf")


class UsageError(ValueError):
    """A folder, file or setting the command cannot use: printed on one line, exit status 2."""


def _positive(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def _folder(value: str) -> Path:
    path = Path(value)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such folder: {value}")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"not a folder: {value}")
    return path


def _model_folder(value: str) -> Path:
    """An argparse type: a folder holding a Transformers model (config.json and weights)."""
    path = _folder(value)
    if not (path / "config.json").is_file():
        raise argparse.ArgumentTypeError(
            f"{value} is not a model folder: it has no config.json (save_pretrained writes one)"
        )
    if not any((path / name).is_file() for name in WEIGHTS_FILES):
        raise argparse.ArgumentTypeError(
            f"{value} has a config.json but no weights (none of {', '.join(WEIGHTS_FILES)})"
        )
    return path


def _checkpoint_folder(value: str) -> Path:
    """An argparse type: a folder of save_pretrained (config.json) or quanta.save."""
    path = _folder(value)
    if not any((path / name).is_file() for name in ("config.json", *QUANTA_SAVE_FILES)):
        raise argparse.ArgumentTypeError(
            f"{value} is not a model folder: it has no config.json (save_pretrained writes one) "
            f"and no {' or '.join(QUANTA_SAVE_FILES)} (quanta.save writes one)"
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
    command.add_argument(
        "--weights",
        default="int8",
        choices=WEIGHT_QTYPES,
        metavar="QTYPE",
        help="weight qtype, one of: %(choices)s (default: %(default)s)",
    )
    command.add_argument(
        "--activations",
        default=None,
        choices=ACTIVATION_QTYPES,
        metavar="QTYPE",
        help="activation qtype, one of: %(choices)s (default: float activations)",
    )
    command.add_argument(
        "--activations-mode",
        default="static",
        choices=ACTIVATION_MODES,
        help="static (calibrated scales) or dynamic (per-token scales) (default: %(default)s)",
    )
    command.add_argument(
        "--exclude",
        action="append",
        default=None,
        metavar="NAME",
        help="module name to keep float, with the modules under it, repeatable: it matches "
        "whole dot-separated parts of a module's path ('gate_proj', 'model.layers.0'; fnmatch "
        "wildcards allowed), as QuantoConfig's modules_to_not_convert (default: Transformers' "
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
        description="Read DIR's quanta config and safetensors headers (no weights are loaded): "
        "a folder of save_pretrained (config.json's quantization_config) or of quanta.save (the "
        "config in the safetensors metadata).",
    )
    command.add_argument("model_dir", type=_checkpoint_folder, metavar="DIR")


def _add_export(subcommands: argparse._SubParsersAction) -> None:
    command = subcommands.add_parser(
        "export",
        help="export a quantized model folder for vLLM / SGLang or llama.cpp",
        description="Load MODEL_DIR (a folder `quanta quantize` wrote) and write it to OUT in "
        "FORMAT: compressed-tensors (vLLM, SGLang) or gguf (llama.cpp, Ollama), exactly where "
        "the format holds quanta's quantization; anything else is refused, or requantized to the "
        "nearest scheme of the format with --requantize (printing the error it adds).",
    )
    command.add_argument("model_dir", type=_model_folder, metavar="MODEL_DIR")
    command.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    command.add_argument("-o", "--output", type=Path, required=True, metavar="OUT")
    command.add_argument(
        "--requantize",
        action="store_true",
        help="requantize the modules the format cannot hold exactly to its nearest scheme",
    )


def build_parser() -> argparse.ArgumentParser:
    """The `quanta` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(prog="quanta", description="PyTorch weight quantization.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_quantize(subcommands)
    _add_eval(subcommands)
    _add_info(subcommands)
    _add_export(subcommands)
    return parser


def _version() -> str:
    """The installed quanta's version (quanta-qintegrations' where it is installed alone)."""
    try:
        return version("quanta")
    except PackageNotFoundError:
        return f"(quanta-qintegrations {version('quanta-qintegrations')})"


def _quantize(args: argparse.Namespace) -> int:
    from quanta.qintegrations import commands
    from quanta.qintegrations.transformers import QuantaConfig

    try:
        config = QuantaConfig(
            weights=args.weights,
            activations=args.activations,
            activations_mode=args.activations_mode,
            group_size=args.group_size,
            modules_to_not_convert=args.exclude,
        )
        request = commands.QuantizeRequest(
            args.model_dir, args.output, config, args.calibration_text, args.calibration_tokens
        )
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None
    commands.quantize_folder(request)
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


def _export(args: argparse.Namespace) -> int:
    from quanta.qintegrations import commands

    written = commands.export_folder(args.model_dir, args.output, args.format, args.requantize)
    print("\n".join([f"exported to {written} ({args.format})", *commands.written_files(written)]))
    return 0


COMMANDS = {"quantize": _quantize, "eval": _eval, "info": _info, "export": _export}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `quanta` command line; returns the exit status (2 for a usage error)."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UsageError as error:
        print(f"quanta {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
