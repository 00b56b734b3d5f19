"""Fine-tuning of NSA Qwen2.5-VL: trainer, checkpoints, MLflow tracking, Ray Train and torchrun entries."""
