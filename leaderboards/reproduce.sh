#!/usr/bin/env bash
# Regenerate every committed leaderboard from scratch on this machine (measured on the 2-core CPU: about 30-40 minutes), then render.
# Each config holds the exact budget; rows are appended, and the renderer keeps the latest row per setup.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
for cfg in leaderboards/configs/noise_*.yaml; do
    echo "== $cfg"
    "$PY" -m benchmarks.run --config "$cfg"
done
for cfg in leaderboards/configs/accuracy_*.yaml; do
    echo "== $cfg"
    "$PY" -m benchmarks.run --config "$cfg"
done
"$PY" -m benchmarks.run --config leaderboards/configs/throughput_cls_digits_resnet18.yaml
# multi-process pipeline (each CPU stage process pinned to one thread = one device); run on a quiet machine
"$PY" -m benchmarks.run --bench pipeline --model resnet18 --task cls --stages 2 --optimizer sgd --lr 0.05 --steps 60
"$PY" -m benchmarks.run --bench pipeline --model resnet18 --task seg --stages 2 --optimizer sgd --lr 0.05
# the pipeline rows from 2026-11-25 19:30 on (fused optimizers, pinned stages, GPipe / 1F1B at M = 2 and 4)
"$PY" -m benchmarks.run --bench pipeline --model resnet18 --task cls --stages 2 --steps 60 --repeats 3
"$PY" -m benchmarks.run --bench pipeline --model resnet18 --task cls --stages 2
"$PY" -m benchmarks.run --bench pipeline --model resnet18 --task seg --stages 2
"$PY" -m pytest tests/test_speed.py -m bench --benchmark-enable -q
"$PY" -m leaderboards.render
