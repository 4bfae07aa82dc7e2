"""The CPU tracker against CUDA (issue 22): the same model, cut, weights and batch measured by `zoo.memory` on both.

On a machine with a GPU, each setting is measured three ways, one training step after one warm-up step:

- `cpu`: the CPU tracker (the profiler's allocator events replayed, `cpu_tensor_events`), the model on the CPU;
- `cuda`: `torch.cuda.max_memory_allocated` over the step (`cuda_max_allocated`, what the bench reports on CUDA);
- `cuda_events`: the CPU tracker's replay applied to the CUDA allocator's events of that same step, so the gap
  between `cpu` and `cuda` splits into what the two devices allocate differently (kernels, workspaces) and what the
  caching allocator adds (rounding, counted in `cuda` only).

    python leaderboards/explore/memory/cuda_check.py --out check.csv              # the settings below
    python leaderboards/explore/memory/cuda_check.py --quick --out check.csv      # tiny, to try the script

The cuts are given (`units`), not chosen, so both devices measure the same blocks: the memory-balanced cuts the CPU
bench chose for timm resnet50 at 224 px (3+13, 1+2+3+10), and the SMP adapter's K = 2 grouping for Unet-resnet18.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import torch  # noqa: E402

import zoo  # noqa: E402
from benchmarks.results import environment  # noqa: E402
from zoo.memory import MemoryTracker, _profiled  # noqa: E402
from zoo.train import TrainConfig, Trainer  # noqa: E402

# (task, model, img_size, batch, method, cut): cut is block_units (cls, cut="block") or num_blocks (seg)
SETTINGS = [
    ("cls", "resnet50", 224, 64, "bp", None),
    ("cls", "resnet50", 224, 64, "deinforeg", [3, 13]),
    ("cls", "resnet50", 224, 64, "deinforeg", [1, 2, 3, 10]),
    ("cls", "resnet18", 224, 64, "bp", None),
    ("cls", "resnet18", 224, 64, "deinforeg", [1, 7]),
    ("seg", "resnet18", 256, 16, "bp", None),
    ("seg", "resnet18", 256, 16, "deinforeg", 2),
]
QUICK = [("cls", "resnet18", 32, 8, "bp", None), ("cls", "resnet18", 32, 8, "deinforeg", [4, 4])]
COLUMNS = ("task", "model", "img_size", "batch_size", "method", "cut", "cpu_peak_mb", "cpu_activations_mb",
           "cuda_peak_mb", "cuda_activations_mb", "cuda_events_peak_mb", "cuda_over_cpu", "parameters_mb",
           "optimizer_mb", "cpu_threads", "gpu", "torch", "commit", "date")  # fmt: skip


def build(task: str, model: str, img: int, method: str, cut: object) -> zoo.DecoupledModel:
    torch.manual_seed(0)  # the same weights on both devices
    if task == "seg":
        kw = {} if method == "bp" else {"num_blocks": cut}
        return zoo.create_model(model, task="seg", method=method, num_classes=4, img_size=img, **kw)
    kw = {} if method == "bp" else {"cut": "block", "block_units": list(cut)}
    return zoo.create_model(model, method=method, num_classes=10, img_size=img, **kw)


def step_memory(model: zoo.DecoupledModel, x: torch.Tensor, y: torch.Tensor, device: str) -> MemoryTracker:
    """One warm-up step (allocator reporting, as `zoo.memory.measure_train_step`), then the tracked step."""
    trainer = Trainer(model, TrainConfig(), total_steps=10, device=device)
    x, y = x.to(device), y.to(device)
    _profiled(lambda: trainer.train_step(x, y))
    with MemoryTracker(device, trainer.model, trainer.optimizers, (x, y)) as mem:
        trainer.train_step(x, y)
    return mem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="CSV the rows are appended to")
    ap.add_argument("--quick", action="store_true", help="two tiny settings, to try the script")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads for the CPU half")
    ap.add_argument("--task-model", default=None, help="only the settings of this task:model, e.g. cls:resnet50")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("cuda_check: no CUDA device here; this check compares the CPU tracker with CUDA on one machine")
    if a.threads:
        torch.set_num_threads(a.threads)
    env = environment("cuda")
    out = Path(a.out)
    new = not out.exists()
    with open(out, "a", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        if new:
            w.writeheader()
        settings = [s for s in (QUICK if a.quick else SETTINGS) if a.task_model in (None, f"{s[0]}:{s[1]}")]
        for task, model, img, batch, method, cut in settings:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(batch, 3, img, img, generator=g)
            shape = (batch, img, img) if task == "seg" else (batch,)
            y = torch.randint(0, 4 if task == "seg" else 10, shape, generator=g)
            t0 = time.perf_counter()
            cpu = step_memory(build(task, model, img, method, cut), x, y, "cpu").result
            gpu = step_memory(build(task, model, img, method, cut), x, y, "cuda")
            torch.cuda.empty_cache()
            cu = gpu.result
            start = sum(n for n, _ in gpu._start.values()) / 2**20  # the tracked state at the step's start
            row = {
                "task": task, "model": model, "img_size": img, "batch_size": batch, "method": method,
                "cut": "" if cut is None else (cut if isinstance(cut, int) else "+".join(map(str, cut))),
                "cpu_peak_mb": round(cpu.peak_mb, 1), "cpu_activations_mb": round(cpu.activations_mb, 1),
                "cuda_peak_mb": round(cu.peak_mb, 1), "cuda_activations_mb": round(cu.activations_mb, 1),
                "cuda_events_peak_mb": round(start + gpu.peak_growth_bytes / 2**20, 1),
                "cuda_over_cpu": round(cu.peak_mb / cpu.peak_mb, 4), "parameters_mb": round(cu.parameters_mb, 1),
                "optimizer_mb": round(cu.optimizer_mb, 1), "cpu_threads": torch.get_num_threads(),
                "gpu": env["device"], "torch": env["torch"], "commit": env["commit"], "date": env["date"],
            }  # fmt: skip
            w.writerow(row)
            f.flush()
            print(f"{task} {model} {img}px b{batch} {method} {row['cut'] or '-'}: cpu {row['cpu_peak_mb']} MB, "
                  f"cuda {row['cuda_peak_mb']} MB (events {row['cuda_events_peak_mb']}), "
                  f"cuda/cpu {row['cuda_over_cpu']}  [{time.perf_counter() - t0:.0f} s]", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
