"""Read prepared shards back as model inputs: a map-style dataset usable directly by a torch DataLoader."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from safetensors import safe_open

from nsa_data.config import PrepareConfig
from nsa_data.errors import ManifestError
from nsa_data.processor import patchify


class ShardDataset:
    """Questions of a prepared folder with their video tensors, loaded lazily from the shards.

    Each item is a dict with the index columns (``id``, ``question``, ``options``, ``answer``, ``answer_index``,
    ``task``, ``category``, ``split``, ``video_key``, ``second_per_grid_ts``, ``sampling_fps``,
    ``num_video_tokens`` ...) plus ``pixel_values_videos`` ``[t·h·w, 1176]`` float32, ``video_grid_thw``
    ``[1, 3]`` int64 and ``frame_times`` ``[F]`` seconds; with ``as_torch`` the arrays are torch tensors.
    """

    def __init__(
        self, prepared_dir: str | Path, splits: tuple[str, ...] = (), as_torch: bool = False, cache_shards: int = 4
    ) -> None:
        """Open a prepared folder.

        Args:
            prepared_dir: Output folder of :func:`nsa_data.shards.prepare_shards`.
            splits: Keep only these splits; empty keeps all.
            as_torch: Return torch tensors instead of numpy arrays.
            cache_shards: Open shard handles kept at once.

        Raises:
            ManifestError: if the folder has no ``index.parquet`` or ``prepare_config.json``.
        """
        self.root = Path(prepared_dir)
        index, cfg = self.root / "index.parquet", self.root / "prepare_config.json"
        if not index.is_file() or not cfg.is_file():
            raise ManifestError(f"{self.root} is not a prepared folder (run `nsa-data prepare` to create it)")
        self.config = PrepareConfig.model_validate(json.loads(cfg.read_text()))
        rows = pq.read_table(index).to_pylist()
        self.rows = [r for r in rows if not splits or r["split"] in splits]
        self.as_torch = as_torch
        self._cache_size = cache_shards
        self._handles: OrderedDict[str, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self.rows)

    def _shard(self, name: str) -> Any:
        if name not in self._handles:
            if len(self._handles) >= self._cache_size:
                self._handles.popitem(last=False)
            self._handles[name] = safe_open(str(self.root / "shards" / name), framework="np")
        self._handles.move_to_end(name)
        return self._handles[name]

    def video(self, key: str, shard: str) -> dict[str, np.ndarray]:
        """The tensors of one video.

        Args:
            key: Video key (index column ``video_key``).
            shard: Shard file name (index column ``shard``).

        Returns:
            ``pixel_values_videos``, ``video_grid_thw``, ``frame_times`` and ``frame_indices`` as numpy arrays.
        """
        fh = self._shard(shard)
        grid = fh.get_tensor(f"{key}.video_grid_thw")
        if self.config.store == "frames":
            s = self.config.sampling
            pixel_values = patchify(fh.get_tensor(f"{key}.frames"), s.temporal_patch_size, s.patch_size, s.merge_size)[
                0
            ]
        else:
            pixel_values = fh.get_tensor(f"{key}.pixel_values_videos")
        return {
            "pixel_values_videos": pixel_values,
            "video_grid_thw": grid,
            "frame_times": fh.get_tensor(f"{key}.frame_times"),
            "frame_indices": fh.get_tensor(f"{key}.frame_indices"),
        }

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = dict(self.rows[i])
        tensors = self.video(row["video_key"], row["shard"])
        if self.as_torch:
            import torch

            tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}
        row.update(tensors)
        return row
