"""Is the memory-balanced cut the lowest unit cut? timm resnet50, 224 px, batch 64, DeInfoReg trained block by block.

    PYTHONPATH=. python leaderboards/explore/memory/unit_cuts_resnet50.py "[3,13]" "[4,12]" "[2,14]"

Each argument is one cut into bottleneck units (`cut="block"`, `block_units`); each line printed is the CPU tracker's
training peak (`benchmarks.memory.measure`: tensors counted, after one warm-up step) and its split, the same
measurement `--bench memory` makes, on a random batch of the bench's shape (memory does not depend on the pixels).
Output of 2026-12-04 (commit d177094, one thread, beside two training processes; counted tensors do not depend on
the load): `unit_cuts_resnet50.txt` (its print line reworded since, the figures as printed).
"""

import json
import sys
import time

import torch

import zoo
from benchmarks.memory import measure
from zoo.train import TrainConfig, seed_everything

torch.set_num_threads(1)
x, y = torch.randn(64, 3, 224, 224), torch.randint(0, 10, (64,))


def build(method, **kw):
    seed_everything(0)
    return zoo.create_model("resnet50", method=method, num_classes=10, img_size=224, **kw)


for units in (json.loads(a) for a in sys.argv[1:]):
    t = time.time()
    r = measure(build, (x, y), "deinforeg", len(units), "memory", units=units, train=TrainConfig(lr=0.002))
    split = ", ".join(f"{k} {r[k + '_mb']:.1f}" for k in ("activations", "optimizer", "parameters", "gradients"))
    print(f"{units} peak {r['peak_mb']:.1f} MB: {split} ({time.time() - t:.0f} s)", flush=True)
