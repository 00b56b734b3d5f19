"""Synthetic long-video benchmark: deterministic mp4 files with TimeScope-like multiple-choice questions."""
