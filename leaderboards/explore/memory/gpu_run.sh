#!/usr/bin/env bash
# Issue 22's CUDA figures in one call on a lent GPU machine, from the repository root there; what lands in $OUT comes
# back. Needs .whl/ holding the segmentation_models_pytorch and timm wheels (the GPU image has no SMP) and
# DEINFOREG_COMMIT (the clean commit sent; gpu_setup.sh). The image's own torch runs (the pinned CUDA wheel cannot
# travel). Its 2026-12-04 rows (explore/memory/h200/) predate the .git handling and say "6531ddb53581+dirty".
#   1. the CPU tracker against CUDA on the same cuts (cuda_check.py), in the background;
#   2. the memory bench on CUDA, as leaderboards/reproduce.sh runs it on the CPU (memory-balanced cuts);
#   3. the largest batch under a cap on CUDA, resnet50 at 224 px.
set -u
. leaderboards/explore/memory/gpu_setup.sh
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import os, torch, timm, segmentation_models_pytorch as s; print('torch', torch.__version__, 'timm', timm.__version__, 'smp', s.__version__, 'cpus', os.cpu_count())"
  echo "commit ${DEINFOREG_COMMIT:-?}"; } 2>&1 | tee "$OUT/env.txt"
timeout 420 python3 leaderboards/explore/memory/cuda_check.py --threads 8 --out "$OUT/cuda_check.csv" > "$OUT/cuda_check.log" 2>&1 &
M="timeout 300 python3 -m benchmarks.run --bench memory --device cuda --wandb disabled --no-progress --out /tmp/runs --leaderboard-dir $OUT/cuda"
{
  $M --model resnet50 --img-size 224 --batch-size 64 --block-counts 2,4 --balance memory
  $M --model resnet18 --img-size 224 --batch-size 64 --block-counts 2,4 --balance memory
  $M --model resnet50 --img-size 32 --batch-size 64 --block-counts 2,4 --balance memory
  $M --model resnet18 --img-size 32 --batch-size 64 --block-counts 2,4 --balance memory
  for m in resnet18 resnet50; do for px in 64 256; do
    $M --task seg --model $m --img-size $px --batch-size 16 --block-counts 2,3,6
  done; done
  $M --model resnet50 --img-size 224 --batch-size 64 --block-counts 2,4 --balance memory --memory-cap-mb 8192
} 2>&1 | grep -v -e USDT -e "^ERROR:.*DeviceProperties" > "$OUT/bench.log"
wait
tail -n 20 "$OUT/cuda_check.log"
grep -E "peak|largest|Error|error" "$OUT/bench.log" | tail -n 60
