"""Registry of NSA implementations.

nsa-core ships the ``reference`` backend. Other packages add theirs through the
``nsa_core.backends`` entry-point group (each entry point names a zero-argument callable that
returns a :class:`Backend`), so nsa-core never imports them by name. ``NSA_BACKEND`` in the
environment overrides ``backend="auto"``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

import torch

from nsa_core.ops.reference import nsa_reference

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "nsa_core.backends"
BACKEND_ENV_VAR = "NSA_BACKEND"


@dataclass(frozen=True)
class Backend:
    """One implementation of ``nsa_attention``.

    Attributes:
        name: the name users pass as ``backend=``.
        forward: callable with the signature of :func:`nsa_core.ops.reference.nsa_reference`.
        supports: whether the backend runs inputs on this device with this dtype.
        priority: ``auto`` picks the highest-priority backend that supports the inputs.
    """

    name: str
    forward: Callable
    supports: Callable[[torch.device, torch.dtype], bool]
    priority: int = 0


_registry: dict[str, Backend] = {}
_plugins_loaded = False


def register_backend(backend: Backend) -> None:
    """Add or replace a backend under ``backend.name``."""
    _registry[backend.name] = backend


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            register_backend(entry.load()())
        except Exception as error:  # a broken optional backend must not break the reference path
            logger.warning("NSA backend %r could not be loaded and is skipped: %s", entry.name, error)


def available_backends() -> dict[str, Backend]:
    """All registered backends by name, plugins included."""
    _load_plugins()
    return dict(_registry)


def resolve_backend(name: str, device: torch.device, dtype: torch.dtype) -> Backend:
    """The backend to run for ``name`` (``"auto"`` or a registered name) on this device and dtype."""
    backends = available_backends()
    if name == "auto":
        name = os.environ.get(BACKEND_ENV_VAR, "auto")
    if name == "auto":
        usable = [b for b in backends.values() if b.supports(device, dtype)]
        return max(usable, key=lambda b: b.priority)
    if name not in backends:
        raise ValueError(f"backend={name!r} is not registered; choose 'auto' or one of {sorted(backends)}")
    backend = backends[name]
    if not backend.supports(device, dtype):
        raise ValueError(f"backend={name!r} does not support device {device} with dtype {dtype}; use backend='auto'")
    return backend


register_backend(Backend(name="reference", forward=nsa_reference, supports=lambda device, dtype: True, priority=0))
