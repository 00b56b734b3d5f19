"""The pipeline's typed parameters: the same config models as the CLIs, DVC ``params.yaml`` and Prefect."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from nsa_core.configio import read_yaml_mapping
from nsa_data.config import PrepareConfig, SynthConfig
from nsa_eval.config import ReportConfig, SweepConfig


class PipelineConfig(BaseModel):
    """synth → prepare → train → evaluate (methods) → ablate (sweeps) → report."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data_dir: str = "artifacts/pipeline/data"
    """``<data_dir>/synth`` and ``<data_dir>/prepared``."""
    synth: SynthConfig = SynthConfig()
    """The synthetic benchmark (``nsa-data synth``)."""
    prepare: PrepareConfig = PrepareConfig()
    """Shards (``nsa-data prepare``)."""
    train_recipe: str = "configs/train/tiny.yaml"
    """Training recipe (``nsa-train --config``)."""
    train_overrides: tuple[str, ...] = ()
    """``key=value`` overrides of the recipe (``nsa-train --set``); set ``output_dir`` so evaluation finds the model."""
    evaluate: SweepConfig
    """The methods sweep (dense vs NSA) on the trained model."""
    ablate: tuple[SweepConfig, ...] = ()
    """Further sweeps (branches, budget, information)."""
    report: ReportConfig = ReportConfig()
    """The report."""

    @property
    def synth_dir(self) -> Path:
        """Synthetic benchmark folder."""
        return Path(self.data_dir) / "synth"

    @property
    def prepared_dir(self) -> Path:
        """Prepared shards folder."""
        return Path(self.data_dir) / "prepared"


def load_pipeline_config(path: str | Path) -> PipelineConfig:
    """Load and validate a pipeline YAML (``configs/pipeline/*.yaml``).

    Args:
        path: YAML file.

    Returns:
        The config.

    Raises:
        ValueError: naming the file and the invalid field.
    """
    try:
        return PipelineConfig.model_validate(read_yaml_mapping(path))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
