#!/usr/bin/env bash
# README command 1: the tiny pipeline end to end on a CPU, no servers (Prefect ephemeral mode, MLflow sqlite).
# synth -> prepare -> train (tiny) -> evaluate (dense vs NSA) -> branch ablation -> report; prints where things are.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
config="${1:-configs/pipeline/tiny.yaml}"
"$root/uvw" sync --quiet
exec "$root/uvw" run python -m flows.pipeline --config "$config"
