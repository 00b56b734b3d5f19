"""Triton forward and backward kernels for native sparse attention, a backend of nsa-core.

``nsa_func`` is the public operator; ``nsa_kernels.backend.triton_backend`` registers it with nsa-core.
"""

from nsa_kernels import _interpreter
from nsa_kernels.nsa import nsa_func

_interpreter.apply()

__all__ = ["nsa_func"]
