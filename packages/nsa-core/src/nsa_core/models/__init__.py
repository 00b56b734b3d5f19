"""Integrations of the hybrid NSA attention into stock transformers models (needs the ``qwen`` extra)."""
