"""Memory-balanced cuts (zoo.pipeline.partition, balance="memory"): measured unit memory, minimal largest block."""

import itertools

import pytest
import torch

import zoo
from zoo.errors import UserError
from zoo.memory import MB, measure_train_step
from zoo.pipeline.partition import (
    UnitProfile,
    block_peak,
    check_balance,
    choose_blocks,
    partition_units,
    unit_memory,
)
from zoo.train import TrainConfig, Trainer


def _batch(n: int = 8):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 10


def _resnet18(**kw):
    torch.manual_seed(0)
    return zoo.create_model("resnet18", num_classes=10, img_size=32, cut="block", **kw)


def _splits(n: int, k: int):
    for cuts in itertools.combinations(range(1, n), k - 1):
        bounds = (0, *cuts, n)
        yield [b - a for a, b in zip(bounds, bounds[1:])]


def test_unit_memory_counts_at_least_each_blocks_output_and_leaves_the_model_alone():
    model = _resnet18()
    x, y = _batch()
    state = {n: v.clone() for n, v in model.state_dict().items()}
    mems = unit_memory(model, x, y)
    assert all(torch.equal(v, model.state_dict()[n]) for n, v in state.items())  # BatchNorm statistics too
    with torch.no_grad():
        feats = [x]
        for block, m in zip(model.blocks, mems):
            feats.append(block(feats))
            assert m.in_bytes == feats[-2].numel() * 4 and m.out_bytes == feats[-1].numel() * 4
            assert m.body_bytes >= m.out_bytes and m.head_bytes > 0 and m.backward_bytes > 0
            assert m.grad_bytes == sum(p.numel() * 4 for p in block.body.parameters())
    # resolution halves stage by stage: the first unit (stem + first residual block) keeps the most
    assert mems[0].body_bytes == max(m.body_bytes for m in mems)


@pytest.mark.parametrize("blocks", [2, 3])
def test_memory_balanced_cuts_minimise_the_largest_predicted_block_peak(blocks):
    model = _resnet18()
    x, y = _batch()
    cuts, mems = choose_blocks(model, x, y, blocks, balance="memory")

    def largest(sizes):
        ends = list(itertools.accumulate(sizes))
        return max(block_peak(mems, e - n, e) for n, e in zip(sizes, ends))

    best = min(largest(s) for s in _splits(len(mems), blocks))
    assert largest(cuts.units_per_block) == best == max(cuts.predicted_bytes)


@pytest.mark.parametrize("units", [[1, 7], [4, 4], [2, 3, 3]])
def test_the_predicted_block_peak_is_the_measured_one(units):
    """block_peak, from units measured alone, against a real block-by-block step of the merged blocks (the batch,
    held by the caller, is the only tensor the step counts that no block's prediction does)."""
    x, y = _batch()
    mems = unit_memory(_resnet18(), x, y)
    starts = list(itertools.accumulate(units, initial=0))
    predicted = max(block_peak(mems, a, b) for a, b in zip(starts, starts[1:])) / MB
    trainer = Trainer(_resnet18(block_units=units), TrainConfig(optimizer="sgd"), total_steps=10)
    r = measure_train_step(trainer, x, y)
    measured = r.activations_mb + r.gradients_mb - x.numel() * 4 / MB
    assert measured == pytest.approx(predicted, rel=0.1)


def test_memory_balanced_cuts_lower_the_measured_training_peak():
    """By measurement, the memory-balanced cut is no worse than 4+4 and in the lower half of the seven 2-block cuts.
    Which cut is lowest depends on the CPU (oneDNN's convolution backward scratch, counted as tensors, differs by
    instruction set): on the machines of earlier stops the early, high-resolution units held the most (the cut beat
    4+4 by over 20%); on an AVX2-only AMD EPYC (2026-12-04) 7+1 was lowest and the choice 4+4 1.07x it; on an
    AVX-512 Intel Xeon (2026-12-05) the seven cuts measure 14.1 / 10.1 / 7.1 / 4.6 / 3.6 / 10.6 / 10.1 MB (1+7 ... 7+1),
    not monotone in the cut, and the choice 4+4 is second, 1.28x 5+3. So "near the best" is not asserted."""
    x, y = _batch(64)
    cuts, _ = choose_blocks(_resnet18(), x, y, 2, balance="memory")

    def activations(units):
        trainer = Trainer(_resnet18(block_units=units), TrainConfig(optimizer="sgd"), total_steps=10)
        return measure_train_step(trainer, x, y).activations_mb

    measured = {tuple(u): activations(u) for u in _splits(8, 2)}
    chosen = measured[tuple(cuts.units_per_block)]
    assert chosen <= measured[(4, 4)] * 1.001, (cuts, measured)  # never worse than the naive cut
    # in the lower half (the units measured alone each count the backward's scratch, which a merged block reuses, so
    # the predictor cannot rank the cuts exactly)
    assert chosen <= sorted(measured.values())[len(measured) // 2] * 1.001, (cuts, measured)


def test_partition_units_balances_memory_or_time():
    profiles = [UnitProfile(1.0, 0, a, 0) for a in (10, 1, 1, 1)]
    assert partition_units(profiles, 2).sizes == [2, 2]
    memory = partition_units(profiles, 2, balance="memory")
    assert memory.sizes == [1, 3] and memory.memory_bytes == [10, 3] and memory.predicted_s == [1.0, 3.0]


def test_a_bad_balance_is_one_line_user_error():
    x, y = _batch()
    for call in (
        lambda: check_balance("mem"),
        lambda: choose_blocks(_resnet18(), x, y, 2, balance="mem"),
        lambda: partition_units([UnitProfile(1.0, 0, 1, 0)], 1, balance="mem"),
    ):
        with pytest.raises(UserError, match=r"^unknown balance 'mem'; valid choices: time, memory$"):
            call()
