"""Hybrid attention pieces, free of transformers: branch gates, vision/text routing, dense text rows."""

from nsa_core.layers.gates import GATE_INIT_STD, GATE_TEMPERATURE, GateKind, NSAGate
from nsa_core.layers.hybrid import GateFn, dense_rows_attention, hybrid_attention
from nsa_core.layers.routing import TokenRouting, VisionPacking, gather_text_rows, pack_vision

__all__ = [
    "GATE_INIT_STD",
    "GATE_TEMPERATURE",
    "GateFn",
    "GateKind",
    "NSAGate",
    "TokenRouting",
    "VisionPacking",
    "dense_rows_attention",
    "gather_text_rows",
    "hybrid_attention",
    "pack_vision",
]
