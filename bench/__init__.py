"""Benchmarks of quanta against dense torch, optimum-quanto and torchao (see README.md)."""
