"""Typed model-level NSA settings, stored as a plain dict under ``config.nsa`` so that they survive save/load."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nsa_core.config import NSAConfig
from nsa_core.layers import GATE_TEMPERATURE, GateKind

CONFIG_KEY = "nsa"
"""Attribute of the top-level HF config (and key of ``config.json``) holding the settings."""
ATTN_IMPLEMENTATION = "videonsa"
"""Name under which the hybrid attention is registered in transformers' ``AttentionInterface``."""
STRUCTURAL_FIELDS = frozenset({"gate", "gate_temperature"})
"""Settings fixed by :func:`convert_to_nsa`; changing them needs new gate modules."""


class VideoNSASettings(BaseModel):
    """How the LLM layers of a converted Qwen2.5-VL attend.

    The defaults are VideoNSA's (clean mode): hybrid attention with the MLP gate at τ = 0.3 and the
    operator defaults of :class:`nsa_core.NSAConfig` (64/64 compression, 32 selected 64-token
    blocks with 1 initial + 2 local forced, window 256).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    attention: Literal["nsa", "dense"] = "nsa"
    """``nsa``: vision rows sparse, text rows dense; ``dense``: the stock ``dense_implementation``, gates unused."""
    dense_implementation: str = "sdpa"
    """Stock transformers attention used in ``dense`` mode (``sdpa``, ``eager``, ``flash_attention_2``, ...)."""
    gate: GateKind = "mlp"
    """Gate module: VideoNSA's 2-layer MLP or a single Linear."""
    gate_temperature: float = Field(GATE_TEMPERATURE, gt=0)
    """Temperature τ of ``sigmoid(logits / τ)``."""
    fixed_gates: tuple[float, float, float] | None = None
    """Constant (cmp, slc, swd) gates replacing the learned ones, e.g. for untrained gates or branch ablations."""
    backend: str = "auto"
    """NSA backend passed to :func:`nsa_core.nsa_attention`."""
    nsa: NSAConfig = Field(default_factory=NSAConfig)
    """Operator hyper-parameters for the vision rows."""

    @field_validator("dense_implementation")
    @classmethod
    def _not_self(cls, value: str) -> str:
        if value == ATTN_IMPLEMENTATION:
            raise ValueError(f"dense_implementation must be a stock attention such as 'sdpa', not {value!r}")
        return value

    @field_validator("fixed_gates")
    @classmethod
    def _in_unit_interval(cls, value: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if value is not None and not all(0.0 <= g <= 1.0 for g in value):
            raise ValueError(f"fixed_gates must lie in [0, 1], got {value}")
        return value

    def to_config_dict(self) -> dict[str, Any]:
        """JSON-serialisable form stored under ``config.nsa``."""
        return self.model_dump(mode="json")

    @classmethod
    def from_model_config(cls, config: Any) -> VideoNSASettings:
        """Settings stored in an HF config, or the defaults when it has none (a dense checkpoint)."""
        raw = getattr(config, CONFIG_KEY, None)
        return cls() if raw is None else cls.model_validate(raw)

    def updated(self, **changes: Any) -> VideoNSASettings:
        """A validated copy; keys of :class:`NSAConfig` (e.g. ``window``) update ``nsa``, others the settings.

        Raises:
            ValueError: for unknown keys, for structural keys (``gate``, ``gate_temperature``) and invalid values.
        """
        unknown = set(changes) - set(type(self).model_fields) - set(NSAConfig.model_fields)
        if unknown:
            raise ValueError(
                f"unknown NSA settings {sorted(unknown)}; choose from {sorted(type(self).model_fields)} "
                f"or the NSAConfig fields {sorted(NSAConfig.model_fields)}"
            )
        structural = STRUCTURAL_FIELDS & set(changes)
        if structural:
            raise ValueError(
                f"{sorted(structural)} define the gate modules; call convert_to_nsa(..., gate=...) instead"
            )
        nsa_changes = {k: v for k, v in changes.items() if k in NSAConfig.model_fields}
        if isinstance(changes.get("nsa"), NSAConfig):
            changes = {**changes, "nsa": changes["nsa"].model_dump(mode="json")}
        raw = self.to_config_dict()
        raw.update({k: v for k, v in changes.items() if k not in nsa_changes})
        raw["nsa"] = {**raw["nsa"], **nsa_changes}
        return type(self).model_validate(raw)
