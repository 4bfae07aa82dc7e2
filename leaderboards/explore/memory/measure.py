"""Exploration run of the memory bench core (benchmarks/memory.py) until `--bench memory` is wired into the harness.

    python leaderboards/explore/memory/measure.py --model resnet50 --img-size 224 --batch 64 --blocks 2 4
    python leaderboards/explore/memory/measure.py --task seg --model resnet18 --img-size 64 --batch 64

Rows (bench columns + environment) are printed and appended as JSON lines to `--out`. One thread: the figures count
tensors, so they do not depend on the machine's load, only the run time does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import torch  # noqa: E402

import zoo  # noqa: E402
from benchmarks.memory import against_bp, measure  # noqa: E402
from benchmarks.results import environment  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="cls", choices=("cls", "seg"))
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--blocks", type=int, nargs="*", default=[2, 4])
    ap.add_argument("--balance", default="memory", help="time | memory | none (the builder's own cut)")
    ap.add_argument("--methods", nargs="*", default=["bp", "deinforeg"])
    ap.add_argument("--summed", action="store_true", help="also the summed backward, for comparison")
    ap.add_argument("--out", default=str(Path(__file__).with_name("rows.jsonl")))
    a = ap.parse_args()
    torch.set_num_threads(1)
    balance = None if a.balance == "none" else a.balance

    def build(method, **kw):
        torch.manual_seed(0)
        if a.task == "seg":
            kw.pop("num_blocks", None)  # an SMP model is cut at its encoder stages
            return zoo.create_model(a.model, task="seg", method=method, num_classes=a.num_classes, img_size=a.img_size)
        return zoo.create_model(a.model, method=method, num_classes=a.num_classes, img_size=a.img_size, **kw)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, 3, a.img_size, a.img_size, generator=g)
    shape = (a.batch, a.img_size, a.img_size) if a.task == "seg" else (a.batch,)
    y = torch.randint(0, a.num_classes, shape, generator=g)
    env = environment()
    rows = []
    plan = [("bp", None, "blockwise")]
    for m in a.methods:
        if m == "bp":
            continue
        for k in a.blocks if a.task == "cls" else [None]:
            plan.append((m, k, "blockwise"))
            if a.summed:
                plan.append((m, k, "summed"))
    for method, k, backward in plan:
        if method == "bp" and "bp" not in a.methods:
            continue
        t0 = time.perf_counter()
        row = measure(build, (x, y), method, k, balance if a.task == "cls" else None, backward)
        row.update(task=a.task, model=a.model, img_size=a.img_size, seconds=round(time.perf_counter() - t0, 1))
        rows.append(row)
        print(json.dumps(row), flush=True)
    with open(a.out, "a") as f:
        for r in against_bp(rows):
            f.write(json.dumps({**r, **env}) + "\n")
            print(
                f"{r['method']:>9} K={r['num_blocks']} {r['backward'] or '-':>9} units {r['units_per_block'] or '-':>7}"
                f"  peak {r['peak_mb']:8.1f} MB = params {r['parameters_mb']:.1f} + grads {r['gradients_mb']:.1f}"
                f" + optim {r['optimizer_mb']:.1f} + activations {r['activations_mb']:.1f}"
                f"  ratio {r['ratio_vs_bp'] if r['ratio_vs_bp'] is None else round(r['ratio_vs_bp'], 3)}"
            )


if __name__ == "__main__":
    main()
