"""Triton forward and backward kernels for native sparse attention, a backend of nsa-core."""
