#!/usr/bin/env bash
# The headline rows of gpu_run.sh again (timm resnet50, 224 px, batch 64, K = 2 and 4, memory-balanced cuts; and its
# CPU-tracker-against-CUDA check), recording the commit sent. The device copy's .git is the checkout the session
# started from, not the commit sent (gpu_run.sh's rows say "6531ddb53581+dirty" for that reason), so it is moved
# aside and zoo.runtime.git_commit reads $DEINFOREG_COMMIT, as for any copy of a clean tree sent to another machine.
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT/cuda"
[ -n "${DEINFOREG_COMMIT:-}" ] || { echo "set DEINFOREG_COMMIT to the commit sent"; exit 2; }
echo "device copy's .git: $(git rev-parse --short=12 HEAD 2>/dev/null); sent: $DEINFOREG_COMMIT"
[ -d .git ] && mv .git /tmp/device-copy-git
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 KINETO_LOG_LEVEL=5
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/env.txt"
timeout 150 python3 leaderboards/explore/memory/cuda_check.py --threads 8 --task-model cls:resnet50 \
  --out "$OUT/cuda_check.csv" > "$OUT/cuda_check.log" 2>&1 &
timeout 150 python3 -m benchmarks.run --bench memory --device cuda --wandb disabled --no-progress --out /tmp/runs \
  --leaderboard-dir "$OUT/cuda" --model resnet50 --img-size 224 --batch-size 64 --block-counts 2,4 --balance memory \
  2>&1 | grep -v -e USDT -e "^ERROR:.*DeviceProperties" > "$OUT/bench.log"
wait
tail -n 5 "$OUT/cuda_check.log"; tail -n 5 "$OUT/bench.log"
