"""Benchmarks behind ``evmamba bench <name>`` (layer 7, with the command line): each prints a table and writes
JSON (``--json PATH``), and may import any layer below.
"""
