"""Benchmarks behind `genaccel bench`: a registry of declarations on one runner (registry.py).

A family module declares a `Benchmark` (config dataclass, default configs, per config the rows:
inputs, baselines and the candidate handed to the runner's timing and error check, the table's
columns, a plot) and `register`s it; the registry imports every module of this package.
Shared timing and the environment record: timing.py; what the attention families share: common.py.
"""

from .registry import Benchmark, BenchError, Run, benchmarks, get, register, run_bench

__all__ = ["Benchmark", "BenchError", "Run", "benchmarks", "get", "register", "run_bench"]
