"""Benchmarks behind ``evmamba bench <name>``: each prints a table and writes JSON (``--json PATH``).

Benchmarks sit above the four sub-packages and may import any of them.
"""
