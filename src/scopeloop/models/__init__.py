"""Torch models of the worker: denoiser, nucleus labels, mitosis score."""
