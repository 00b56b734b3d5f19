"""Fine-tuning of NSA Qwen2.5-VL: trainer, checkpoints, MLflow tracking, Ray Train and torchrun entries.

Entry points: :func:`train` (one process, or one rank under ``torchrun``), :func:`nsa_train.launch.train_with_ray`
(Ray Train ``TorchTrainer``), :func:`load_config` and the ``nsa-train`` CLI.
"""

from nsa_train.config import TrainConfig, load_config
from nsa_train.trainer import TrainResult, run_training

train = run_training
"""``train(config, resume=False, on_step=None) -> TrainResult``: run the training function in this process."""

__all__ = ["TrainConfig", "TrainResult", "load_config", "train"]
