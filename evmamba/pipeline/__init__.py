"""evmamba.pipeline"""
