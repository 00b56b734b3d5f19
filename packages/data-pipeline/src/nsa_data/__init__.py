"""Video sampling, dataset ingest, model-ready shards and the synthetic long-video benchmark.

Public names are imported lazily, so ``import nsa_data`` (and ``nsa_data.config``) stays free of PyAV, numpy
and pyarrow until a function that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SamplingConfig": "nsa_data.config",
    "SynthConfig": "nsa_data.config",
    "IngestConfig": "nsa_data.config",
    "PrepareConfig": "nsa_data.config",
    "DataParams": "nsa_data.config",
    "load_params": "nsa_data.config",
    "NsaDataError": "nsa_data.errors",
    "VideoReadError": "nsa_data.errors",
    "ManifestError": "nsa_data.errors",
    "ManifestRow": "nsa_data.manifest",
    "read_manifest": "nsa_data.manifest",
    "write_manifest": "nsa_data.manifest",
    "resolve_video": "nsa_data.manifest",
    "SampledVideo": "nsa_data.video",
    "probe_video": "nsa_data.video",
    "sample_video": "nsa_data.video",
    "temporal_position_ids": "nsa_data.video",
    "patchify": "nsa_data.processor",
    "smart_resize": "nsa_data.processor",
    "generate_synthetic": "nsa_data.synth.generate",
    "ingest": "nsa_data.ingest",
    "prepare_shards": "nsa_data.shards",
    "ShardDataset": "nsa_data.dataset",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nsa_data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
