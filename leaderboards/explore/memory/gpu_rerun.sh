#!/usr/bin/env bash
# The headline rows of gpu_run.sh again (timm resnet50, 224 px, batch 64, K = 2 and 4, memory-balanced cuts; and its
# CPU-tracker-against-CUDA check), recording the commit sent. The device copy's .git is the checkout the session
# started from, not the commit sent (gpu_run.sh's first rows say "6531ddb53581+dirty" for that reason); gpu_setup.sh
# moves it aside so the commit sent is recorded.
set -u
. leaderboards/explore/memory/gpu_setup.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/env.txt"
timeout 150 python3 leaderboards/explore/memory/cuda_check.py --threads 8 --task-model cls:resnet50 \
  --out "$OUT/cuda_check.csv" > "$OUT/cuda_check.log" 2>&1 &
timeout 150 python3 -m benchmarks.run --bench memory --device cuda --wandb disabled --no-progress --out /tmp/runs \
  --leaderboard-dir "$OUT/cuda" --model resnet50 --img-size 224 --batch-size 64 --block-counts 2,4 --balance memory \
  2>&1 | grep -v -e USDT -e "^ERROR:.*DeviceProperties" > "$OUT/bench.log"
wait
tail -n 5 "$OUT/cuda_check.log"; tail -n 5 "$OUT/bench.log"
