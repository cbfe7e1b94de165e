"""Benchmarks of the ipsynergy jobs against single-process baselines (issue #9): ``python -m bench.run``."""
