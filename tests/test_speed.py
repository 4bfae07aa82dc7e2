"""Micro-benchmarks (marker `bench`, out of the default run): the DeInfoReg loss and one training step of BP vs
DeInfoReg for timm resnet18 at 32×32, batch 64, default projector.

    .venv/bin/python -m pytest tests/test_speed.py -m bench --benchmark-enable

With timing enabled the ratio is appended to `leaderboards/speed_cls.csv` ($DEINFOREG_SPEED_DIR overrides the
folder): the ratio of pytest-benchmark medians, and an interleaved ratio (BP and DeInfoReg steps alternated, so a
neighbour's load on a shared CPU hits both alike).

These are benchmarks that measure, print and record; they pass or fail on correctness only, never on a timing.
The design card's target (DeInfoReg step ≤ 1.15 × BP step) is not asserted here, and deliberately: a ratio of two
wall-clock medians on a shared 2-core CPU moves with whatever else runs (the two sessions recorded so far gave
1.070 and 1.056 plain, 1.039 and 1.079 interleaved; one run beside other jobs, at 1cd1ab7, 0.90 plain and 1.10
interleaved), so an assertion would fail for the neighbours' load rather than for the code, and a check that fails
at random is not a test. The target is a figure to read beside the measurement instead: each row records it
(`target` column), the run prints whether the measured ratios meet it, and the leaderboard shows both.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import pytest
import torch

import zoo
from benchmarks.results import append_rows, environment
from zoo.train import TrainConfig, Trainer

pytestmark = pytest.mark.bench

MODEL, IMG, BATCH = "resnet18", 32, 64
TARGET = 1.15  # DESIGN card: DeInfoReg step ≤ 1.15 × BP step; recorded beside each measurement, never asserted
COLUMNS = ("model", "img_size", "batch_size", "projector", "bp_ms", "deinforeg_ms", "ratio", "ratio_interleaved",
           "target", "rounds", "threads", "device", "torch", "commit", "date")  # fmt: skip
_MEDIANS: dict[str, float] = {}


def _trainer(method: str) -> tuple[Trainer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = zoo.create_model(MODEL, task="cls", method=method, num_classes=10, img_size=IMG)
    x, y = torch.randn(BATCH, 3, IMG, IMG), torch.randint(0, 10, (BATCH,))
    return Trainer(model, TrainConfig(), total_steps=10**6), x, y


def _record(benchmark, key: str) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        _MEDIANS[key] = stats.stats.median


def test_deinforeg_loss(benchmark):
    z = torch.randn(128, 512, requires_grad=True)
    y = torch.randint(0, 10, (128,))

    def fwd_bwd():
        zoo.losses.deinforeg(z, y, 10).total.backward()

    benchmark(fwd_bwd)


@pytest.mark.parametrize("method", ["bp", "deinforeg"])
def test_train_step(benchmark, method):
    trainer, x, y = _trainer(method)
    for _ in range(2):
        trainer.train_step(x, y)
    benchmark.pedantic(trainer.train_step, args=(x, y), rounds=10, iterations=1, warmup_rounds=1)
    _record(benchmark, method)


def test_step_ratio_interleaved(benchmark):
    """Alternate BP and DeInfoReg steps; append both ratios to the speed leaderboard when timings are on."""
    bp, x, y = _trainer("bp")
    de, _, _ = _trainer("deinforeg")
    times: dict[str, list[float]] = {"bp": [], "deinforeg": []}

    def alternate(rounds: int = 8) -> None:
        for _ in range(rounds):
            for name, tr in (("bp", bp), ("deinforeg", de)):
                t0 = time.perf_counter()
                tr.train_step(x, y)
                times[name].append(time.perf_counter() - t0)

    alternate(2)  # warm-up
    times = {"bp": [], "deinforeg": []}
    benchmark.pedantic(alternate, rounds=1, iterations=1)
    interleaved = statistics.median(times["deinforeg"]) / statistics.median(times["bp"])
    if "bp" not in _MEDIANS or "deinforeg" not in _MEDIANS:
        pytest.skip("timings disabled (--benchmark-disable) or the step benchmarks did not run")
    ratio = _MEDIANS["deinforeg"] / _MEDIANS["bp"]
    env = environment("cpu")
    row = {"model": f"timm/{MODEL}", "img_size": IMG, "batch_size": BATCH, "projector": "pool (default)",
           "bp_ms": 1000 * _MEDIANS["bp"], "deinforeg_ms": 1000 * _MEDIANS["deinforeg"], "ratio": ratio,
           "ratio_interleaved": interleaved, "target": TARGET, "rounds": 10, "threads": torch.get_num_threads(),
           **env}  # fmt: skip
    out = Path(os.environ.get("DEINFOREG_SPEED_DIR", Path(__file__).resolve().parents[1] / "leaderboards"))
    append_rows(out / "speed_cls.csv", [row], COLUMNS)
    met = {True: "meets", False: "misses"}
    print(
        f"\nDeInfoReg / BP step: {ratio:.3f} (pytest-benchmark medians; {met[ratio <= TARGET]} the target "
        f"≤ {TARGET}), {interleaved:.3f} (interleaved; {met[interleaved <= TARGET]} it): recorded, not asserted"
    )
