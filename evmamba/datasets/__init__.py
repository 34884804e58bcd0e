"""evmamba.datasets"""
