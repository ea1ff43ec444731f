"""The package imports with torch alone; the CLI does not load torch or transformers."""

import subprocess
import sys

import quanta.qintegrations


def test_version():
    assert quanta.qintegrations.__version__ == "0.2.0"


def test_cli_import_is_light():
    code = (
        "import sys, quanta.qintegrations.cli; "
        "print(any(m in sys.modules for m in ('transformers', 'torch', 'quanta.qmodules')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
