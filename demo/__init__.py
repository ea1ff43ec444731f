"""The quanta demo: real pretrained models quantized offline, compared with fp32 in one table.

An application of the quanta packages, not part of them: `python -m demo` from the repository
root runs it (`nox -s demo` installs what it needs and runs it); `run.main(DemoSettings(...))`
from Python. The end-to-end tests (tests/) and examples/ load the same real models through it.
"""
