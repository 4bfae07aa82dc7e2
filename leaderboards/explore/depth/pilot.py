"""Depth-bench pilot (issue 25): one seed, a long budget, to see where runs plateau and what one run costs.

Usage (from the repository root): python leaderboards/explore/depth/pilot.py OUT_DIR EPOCHS DEPTH [DEPTH ...]
Raw run folders go to OUT_DIR/runs (not committed); rows, curves, table and plots to this folder.
"""

import csv
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from benchmarks import depth  # noqa: E402
from benchmarks.results import environment  # noqa: E402

HERE = Path(__file__).parent

out, epochs, depths = Path(sys.argv[1]), int(sys.argv[2]), [int(d) for d in sys.argv[3:]]
recipe = depth.DepthRecipe(epochs=epochs, width=16, img_size=16, threads=1)
runs = depth.grid(depths, seeds=[0])
t0 = time.time()
results = depth.run_grid(runs, recipe, out, log=lambda s: print(s, flush=True))
print(f"grid wall time {time.time() - t0:.0f} s for {len(runs)} runs", flush=True)

# every run folder under OUT_DIR, so repeated invocations (more depths) render together
results = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/result.json"))]
results = [r for r in results if r["epochs"] == epochs]
rows = depth.rows_from_results(results, recipe, environment("cpu"), f"pilot-e{epochs}")
tag = f"e{epochs}"
with open(HERE / f"rows_{tag}.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=depth.COLUMNS)
    w.writeheader()
    w.writerows(rows)
with open(HERE / f"curves_{tag}.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["key", "depth", "norm", "init", "method", "seed", "epoch", "train_loss_deepest", "val_per_exit"])
    for r in results:
        for h in r["history"]:
            val = ":".join("-" if v is None else f"{v:.2f}" for v in h["val_per_block"])
            w.writerow(
                [
                    r["key"],
                    r["depth"],
                    r["norm"],
                    r["init"],
                    r["method"],
                    r["seed"],
                    h["epoch"],
                    f"{h['train_loss'][-1]:.4f}",
                    val,
                ]
            )
depth.render(rows, results, HERE / tag)
print((HERE / tag / "table.md").read_text())
