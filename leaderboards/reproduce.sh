#!/usr/bin/env bash
# Regenerate every committed leaderboard row from scratch on this machine, then render (run from a clean, committed
# tree: the harness refuses to append rows from a dirty one). Rows are appended; the renderer keeps the latest per setup.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -m benchmarks.run --config leaderboards/configs/throughput_cls_digits_resnet18.yaml
# multi-process pipeline (each CPU stage process pinned to one thread = one device); run on a quiet machine
"$PY" -m benchmarks.run --bench pipeline --model resnet18 --task cls --stages 2 --optimizer sgd --lr 0.05 --steps 60
"$PY" -m benchmarks.run --bench pipeline --model resnet18 --task seg --stages 2 --optimizer sgd --lr 0.05
# the pipeline rows from 2026-11-25 19:30 on (fused optimizers, pinned stages, GPipe / 1F1B at M = 2 and 4)
"$PY" -m benchmarks.run --bench pipeline --model resnet18 --task cls --stages 2 --steps 60 --repeats 3
# issue 22: the pipeline against two independent BP processes at once (its contended limit), default cut and cut=block
"$PY" -m benchmarks.run --bench pipeline --model resnet18 --task cls --stages 2 --steps 60 --repeats 3 --engines bp-single,bp-contended,deinforeg-pipe --wandb disabled
"$PY" -m benchmarks.run --bench pipeline --model resnet18 --task cls --stages 2 --steps 60 --repeats 3 --engines bp-single,bp-contended,deinforeg-pipe --model-kwargs cut=block --wandb disabled
# 2026-12-04: the same with DeInfoReg on one device (same cut) beside it, at 32 px and at 48 px, quiet machine
"$PY" -m benchmarks.run --bench pipeline --model resnet18 --task cls --stages 2 --steps 60 --repeats 3 --engines bp-single,bp-contended,deinforeg-single,deinforeg-pipe --model-kwargs cut=block --wandb disabled
"$PY" -m benchmarks.run --bench pipeline --model resnet18 --task cls --stages 2 --steps 60 --repeats 3 --engines bp-single,bp-contended,deinforeg-single,deinforeg-pipe --model-kwargs cut=block --img-size 48 --wandb disabled
"$PY" -m benchmarks.run --bench pipeline --model resnet18 --task cls --stages 2
"$PY" -m benchmarks.run --bench pipeline --model resnet18 --task seg --stages 2
# grow (progressive depth; extension of a pulled checkpoint)
"$PY" -m benchmarks.run --bench grow --model resnet18 --epochs 8 --grow-at 2,4,6 --seeds 0,1,2 --threads 1 --wandb disabled
"$PY" -m benchmarks.run --bench grow --model resnet18 --epochs 8 --grow-at 2,4,6 --freeze-overtaken --seeds 0,1,2 --threads 1 --wandb disabled
"$PY" -m benchmarks.run --bench grow --init-from resnet18.deinforeg_digits --add-blocks conv:128:1 --epochs 8 --seeds 0,1,2 --threads 1 --wandb disabled
# GPU rows (leaderboards/logs/h200_*.txt): on a CUDA machine
# "$PY" -m benchmarks.run --bench pipeline --stages 2 --steps 40 --warmup 8 --device cuda --oversubscribe --bandwidth-gbps 10,100,400,3600 --model resnet50 --task cls --img-size 224 --batch-size 64
# "$PY" -m benchmarks.run --bench pipeline --stages 2 --steps 40 --warmup 8 --device cuda --oversubscribe --bandwidth-gbps 10,100,400,3600 --model resnet50 --task seg --img-size 256 --batch-size 16
# converged recipes: the learning curves they were chosen from (leaderboards/explore/)
"$PY" -m benchmarks.run --model resnet18 --methods bp,deinforeg --epochs 30 --leaderboard-dir leaderboards/explore --wandb disabled --no-progress --no-checkpoint
"$PY" -m benchmarks.run --task seg --model resnet18 --methods bp,deinforeg --budget converged --epochs 24 --threads 1 --leaderboard-dir leaderboards/explore --wandb disabled --no-progress
# issue 20 grids on the selection-rule protocol: timm resnet18, 5 seeds, one process per rate (about 30 min each on
# one thread; rows append per rate, `--resume runs/<run>` continues a stopped one); clean validation, then noisy
for r in 0.0 0.2 0.4 0.6; do
  "$PY" -m benchmarks.run --config leaderboards/configs/noise_cls_digits_resnet18.yaml --seeds 0,1,2,3,4 --noise-rates $r
done
for r in 0.4 0.6; do
  "$PY" -m benchmarks.run --config leaderboards/configs/noise_cls_digits_resnet18.yaml --seeds 0,1,2,3,4 --noise-rates $r --val-noise
done
# issue 20's convergence rule: every method at 1.5x the epochs (18), 3 seeds, then the check against the grid above
# (about 22 min a rate on one thread; two rates side by side in two clean clones, rows merged)
for r in 0.0 0.2 0.4 0.6; do
  "$PY" -m benchmarks.run --config leaderboards/configs/noise_cls_digits_resnet18.yaml --seeds 0,1,2 --noise-rates $r --epochs 18 --threads 1 --leaderboard-dir leaderboards/explore/convergence
done
"$PY" -m benchmarks.run --config leaderboards/configs/noise_cls_digits_resnet18_pair.yaml
for r in 0.2 0.4; do
  "$PY" -m benchmarks.run --config leaderboards/configs/noise_cls_digits_resnet18_pair.yaml --seeds 0,1,2 --noise-rates $r --epochs 18 --threads 1 --leaderboard-dir leaderboards/explore/convergence
done
for r in 0.0 0.4; do  # the paper models (2026-12-04) and the noisy-validation rows (0.4, 0.6), the same rule
  "$PY" -m benchmarks.run --config leaderboards/configs/noise_cls_digits_paper.yaml --seeds 0,1,2 --noise-rates $r --epochs 18 --threads 1 --leaderboard-dir leaderboards/explore/convergence
done
for r in 0.4 0.6; do
  "$PY" -m benchmarks.run --config leaderboards/configs/noise_cls_digits_resnet18.yaml --seeds 0,1,2 --noise-rates $r --epochs 18 --threads 1 --val-noise --leaderboard-dir leaderboards/explore/convergence
done
"$PY" -m leaderboards.convergence leaderboards/curves_cls_digits.csv leaderboards/explore/convergence/curves_cls_digits.csv --epochs 12 --out leaderboards/explore/convergence/check_digits.md || true
"$PY" -m benchmarks.run --config leaderboards/configs/noise_cls_digits_paper.yaml
# shapes: one command per method (a row holds one method's seeds; the recipe hash leaves the method out, so the rows
# of separate commands share one table), two at a time, one thread each. 2026-12-04 at 24 epochs, two side by side:
# BP 27-34 min a run, DeInfoReg 27-40 min (about 1 h 35 min / 1 h 40 min for 3 seeds); greedy ran about 34 min
for r in 0.0 0.4; do
  "$PY" -m benchmarks.run --config leaderboards/configs/noise_seg_shapes_unet_resnet18.yaml --noise-rates $r --methods bp --threads 1 &
  "$PY" -m benchmarks.run --config leaderboards/configs/noise_seg_shapes_unet_resnet18.yaml --noise-rates $r --methods deinforeg --threads 1
  wait
  "$PY" -m benchmarks.run --config leaderboards/configs/noise_seg_shapes_unet_resnet18.yaml --noise-rates $r --methods greedy --threads 1 &
  "$PY" -m benchmarks.run --config leaderboards/configs/noise_seg_shapes_unet_resnet18.yaml --noise-rates $r --methods scpl --threads 1
  wait
done
# the converged K x head sweep (issue 21): DeInfoReg's other designs at the same recipe, noise 0, 3 seeds (K = 2 with
# the decoding head, BP, greedy and SCPL are the noise-0 grid above), then its table and plot
for design in "2 pointwise" "3 pointwise" "6 pointwise" "3 decoding" "6 decoding"; do
  set -- $design
  "$PY" -m benchmarks.run --config leaderboards/configs/noise_seg_shapes_unet_resnet18.yaml --noise-rates 0 --methods deinforeg --num-blocks $1 --model-kwargs head=$2 --threads 1 --leaderboard-dir leaderboards/explore/seg_sweep/converged
done
"$PY" leaderboards/explore/seg_sweep/converged.py --out leaderboards/explore/seg_sweep/converged.md
# finer cuts (issue 14): the accuracy cost of more / fewer local heads
"$PY" -m benchmarks.run --config leaderboards/configs/accuracy_cls_digits_resnet18_cuts.yaml
"$PY" -m benchmarks.run --config leaderboards/configs/accuracy_cls_digits_resnet18_cuts_5_3.yaml
# pipeline x data parallel and S = 4, oversubscribed on 2 cores: correctness rows, not speed
"$PY" -m benchmarks.run --bench pipeline --model resnet18 --task cls --stages 2 --replicas 2 --oversubscribe --steps 10 --engines bp-single,deinforeg-pipe --wandb disabled
"$PY" -m benchmarks.run --bench pipeline --model resnet18 --task cls --stages 4 --oversubscribe --steps 10 --engines bp-single,deinforeg-pipe --wandb disabled --no-plot
# memory (issue 22): peaks count tensors, so a busy machine does not change them
"$PY" -m benchmarks.run --bench memory --model resnet50 --img-size 224 --batch-size 64 --block-counts 2,4 --balance memory --threads 1 --wandb disabled
"$PY" -m benchmarks.run --bench memory --model resnet18 --img-size 224 --batch-size 64 --block-counts 2,4 --balance memory --threads 1 --wandb disabled
"$PY" -m benchmarks.run --bench memory --model resnet18 --img-size 224 --batch-size 64 --block-counts 2,4 --balance time --threads 1 --wandb disabled
"$PY" -m benchmarks.run --bench memory --model resnet18 --img-size 32 --batch-size 64 --block-counts 2,4 --balance memory --threads 1 --wandb disabled
"$PY" -m benchmarks.run --bench memory --model resnet18 --img-size 32 --batch-size 64 --block-counts 2,4 --balance time --threads 1 --wandb disabled
"$PY" -m benchmarks.run --bench memory --model resnet50 --img-size 32 --batch-size 64 --block-counts 2,4 --balance memory --threads 1 --wandb disabled
"$PY" -m benchmarks.run --bench memory --model resnet50 --img-size 32 --batch-size 64 --block-counts 2,4 --balance time --threads 1 --wandb disabled
for m in resnet18 resnet50; do for px in 64 256; do  # Unet: K is the adapter's grouping, the segmentation sweep's cut
  "$PY" -m benchmarks.run --bench memory --task seg --model $m --img-size $px --batch-size 16 --block-counts 2,3,6 --threads 1 --wandb disabled
done; done
# the same on CUDA (needs a GPU; 2026-12-04 on one NVIDIA H200, the rows at the end of memory_cls_digits.csv and in
# explore/memory/h200/): DEINFOREG_COMMIT=<clean commit> bash leaderboards/explore/memory/gpu_run.sh (gpu_rerun.sh:
# the resnet50 224 px rows alone), each with --device cuda; it also runs explore/memory/cuda_check.py (CPU vs CUDA)
# depth (issue 25): 144 runs at the converged budget, 72 epochs (2026-12-04, as two processes split by depth, rows
# merged; the BP depth-48 rows came from the 2026-12-03 budget check at d5dba8c, the rest from clones at 6531ddb)
"$PY" -m benchmarks.run --bench depth --budget converged --seeds 0,1,2 --threads 1 --depths 16,32 --leaderboard-dir runs/depth_lane &
"$PY" -m benchmarks.run --bench depth --budget converged --seeds 0,1,2 --threads 1 --depths 8,48
wait
tail -n +2 runs/depth_lane/depth_cls_digits.csv >> leaderboards/depth_cls_digits.csv
tail -n +2 runs/depth_lane/depth_cls_digits_runs.csv >> leaderboards/depth_cls_digits_runs.csv
# its budget checks (issue 20's rule): the whole grid at 48 epochs (the 2026-12-03 leaderboard, now
# leaderboards/explore/depth/e48; the same two lanes with --epochs 48), and at 108 epochs the settings that moved
"$PY" -m benchmarks.run --bench depth --budget converged --seeds 0,1,2 --threads 1 --depths 48 --norms bn --methods bp --epochs 108 --leaderboard-dir leaderboards/explore/depth/e108
"$PY" -m benchmarks.run --bench depth --budget converged --seeds 0,1,2 --threads 1 --depths 16 --norms none --inits default --methods bp --epochs 108 --leaderboard-dir leaderboards/explore/depth/e108
"$PY" -m benchmarks.run --bench depth --budget converged --seeds 0,1,2 --threads 1 --depths 48 --norms bn --methods bp --epochs 72 --lr 0.001 --leaderboard-dir leaderboards/explore/depth/lr1e-3  # BP's own lr there: worse (83.6 / 70.2)
# BP's own recipe at depth 48 with BN (issue 25): each recipe 6 runs, then the rule across them on validation
D="--bench depth --budget converged --seeds 0,1,2 --threads 1 --depths 48 --norms bn --methods bp --epochs 72"
"$PY" -m benchmarks.run $D --warmup-epochs 5 --leaderboard-dir leaderboards/explore/depth/bp_recipe/warm5
"$PY" -m benchmarks.run $D --warmup-epochs 5 --grad-clip 1 --leaderboard-dir leaderboards/explore/depth/bp_recipe/warm5_clip1
"$PY" -m benchmarks.run $D --warmup-epochs 5 --lr 0.004 --leaderboard-dir leaderboards/explore/depth/bp_recipe/warm5_lr4e-3
"$PY" -m benchmarks.run $D --grad-clip 1 --leaderboard-dir leaderboards/explore/depth/bp_recipe/clip1
"$PY" -m benchmarks.run $D --optimizer sgd --lr 0.05 --leaderboard-dir leaderboards/explore/depth/bp_recipe/sgd_lr5e-2
"$PY" -m benchmarks.run $D --optimizer sgd --lr 0.05 --warmup-epochs 5 --leaderboard-dir leaderboards/explore/depth/bp_recipe/sgd_lr5e-2_warm5
"$PY" leaderboards/explore/depth/bp_recipe/choose.py --out leaderboards/explore/depth/bp_recipe/choose.md
"$PY" -m leaderboards.convergence leaderboards/explore/depth/e48/depth_cls_digits_runs.csv leaderboards/depth_cls_digits_runs.csv --epochs 48 --out leaderboards/explore/depth/check_48_72.md
"$PY" -m leaderboards.convergence leaderboards/depth_cls_digits_runs.csv leaderboards/explore/depth/e108/depth_cls_digits_runs.csv --epochs 72 --out leaderboards/explore/depth/check_72_108.md
"$PY" -m pytest tests/test_speed.py -m bench --benchmark-enable -q
"$PY" -m leaderboards.render
