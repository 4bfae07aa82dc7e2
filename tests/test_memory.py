"""zoo.memory counts tensors exactly; block-by-block backward lowers the activation peak of a decoupled model."""

import pytest
import torch
import torch.nn as nn

import zoo
from zoo.memory import MB, MemoryTracker, _profiled, measure_train_step
from zoo.train import TrainConfig, Trainer


def test_peak_of_a_known_allocation_pattern_is_exact():
    held = torch.zeros(1000)  # 4000 bytes the caller passes as tracked input: counted from the start
    box = []
    _profiled(lambda: box.append(torch.empty(250_000, dtype=torch.uint8)))  # allocated where the profiler saw it
    with MemoryTracker(inputs=[held, box[0]]) as mem:
        a = torch.empty(1_000_000, dtype=torch.uint8)
        b = torch.empty(3_000_000, dtype=torch.uint8)
        del a
        c = torch.empty(500_000, dtype=torch.uint8)
        box.clear()  # a tracked tensor freed inside: its bytes leave the count
        d = torch.empty(600_000, dtype=torch.uint8)
    assert mem.peak_growth_bytes == 4_000_000
    assert mem.end_growth_bytes == 3_000_000 + 500_000 - 250_000 + 600_000
    assert mem.result.peak_mb * MB == 4000 + 250_000 + 4_000_000
    assert mem.result.activations_mb == mem.result.peak_mb and mem.result.parameters_mb == 0
    del b, c, d


def test_breakdown_names_parameters_gradients_and_optimizer_state():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(64, 256), torch.randint(0, 10, (64,))

    def step():
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    _profiled(step)
    with MemoryTracker(model=net, optimizers=[opt], inputs=[x, y]) as mem:
        step()
    r = mem.result
    param_mb = sum(p.numel() * 4 for p in net.parameters()) / MB
    assert r.parameters_mb == pytest.approx(param_mb, rel=1e-9)
    assert r.optimizer_mb == pytest.approx(param_mb, rel=1e-9)  # one momentum buffer per parameter
    assert 0 < r.gradients_mb <= param_mb and r.activations_mb > 0
    # every gradient exists at the end of the backward; the hidden layer's output and its ReLU (64×512 floats
    # each) during the forward
    assert r.peak_mb >= 3 * param_mb
    assert r.peak_mb * MB >= 2 * param_mb * MB + 2 * 64 * 512 * 4
    assert r.peak_mb == pytest.approx(r.parameters_mb + r.gradients_mb + r.optimizer_mb + r.activations_mb)


def _peak(method: str, backward: str = "blockwise"):
    torch.manual_seed(0)
    model = zoo.create_model("paper_vgg", method=method, num_classes=4, width=0.25, img_size=32)
    trainer = Trainer(model, TrainConfig(optimizer="sgd", backward=backward), total_steps=10)
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 4
    return measure_train_step(trainer, x, y)


def test_blockwise_backward_lowers_deinforegs_activation_peak_below_summed_and_bp():
    bp, summed, blockwise = _peak("bp"), _peak("deinforeg", "summed"), _peak("deinforeg")
    assert blockwise.parameters_mb == summed.parameters_mb and blockwise.optimizer_mb == summed.optimizer_mb
    # K = 4: one block's graph at a time against all four (summed) or the whole network's (bp); the paper VGG's
    # first block holds most of the activations, which is what memory-balanced cuts are for (zoo.pipeline.partition)
    assert blockwise.activations_mb < 0.95 * bp.activations_mb
    assert blockwise.activations_mb < 0.95 * summed.activations_mb
    assert bp.activations_mb < summed.activations_mb  # the local heads' graphs come on top
    assert blockwise.peak_mb < summed.peak_mb


# -- the bench core (benchmarks/memory.py) -------------------------------------------------------------------------
def _timm(method, **kw):
    torch.manual_seed(0)
    return zoo.create_model("resnet18", method=method, num_classes=10, img_size=32, **kw)


def _vgg(method, **kw):
    torch.manual_seed(0)
    return zoo.create_model("paper_vgg", method=method, num_classes=4, width=0.125, img_size=16, **kw)


def _images(n, size=32, classes=10):
    g = torch.Generator().manual_seed(n)
    return torch.randn(n, 3, size, size, generator=g), torch.arange(n) % classes


def test_bench_rows_for_bp_and_memory_balanced_deinforeg():
    from benchmarks.memory import COLUMNS, against_bp, measure

    batch = _images(8)
    rows = against_bp([measure(_timm, batch, "bp"), measure(_timm, batch, "deinforeg", 2, "memory")])
    bp, dec = rows
    assert set(dec) <= set(COLUMNS) and bp["ratio_vs_bp"] == 1.0
    assert dec["num_blocks"] == 2 and sum(map(int, dec["units_per_block"].split("+"))) == 8
    assert dec["balance"] == "memory" and dec["backward"] == "blockwise" and dec["mem_kind"] == "cpu_tensor_events"
    assert dec["ratio_vs_bp"] == pytest.approx(dec["peak_mb"] / bp["peak_mb"])
    for r in rows:
        parts = r["parameters_mb"] + r["gradients_mb"] + r["optimizer_mb"] + r["activations_mb"]
        assert r["peak_mb"] == pytest.approx(parts)


def test_largest_batch_is_the_last_that_fits_the_cap():
    from benchmarks.memory import largest_batch, measure

    make = lambda n: _images(n, 16, 4)  # noqa: E731
    small, large = (measure(_vgg, make(n), "deinforeg", balance=None)["peak_mb"] for n in (4, 24))
    cap = (small + large) / 2
    best = largest_batch(_vgg, make, "deinforeg", cap, balance=None)
    assert best["peak_mb"] <= cap and best["batch_size"] == best["largest_batch"] > 4
    assert best["memory_cap_mb"] == cap
    over = measure(_vgg, make(best["largest_batch"] + 1), "deinforeg", balance=None)
    assert over["peak_mb"] > cap


def test_a_cap_below_the_smallest_batch_is_one_line_user_error():
    from benchmarks.memory import largest_batch
    from zoo.errors import UserError

    with pytest.raises(UserError, match=r"^--memory-cap-mb 0.5 is below what bp needs at its smallest batch \(2\)"):
        largest_batch(_vgg, lambda n: _images(n, 16, 4), "bp", 0.5)
    with pytest.raises(UserError, match="must be positive"):
        largest_batch(_vgg, lambda n: _images(n, 16, 4), "bp", 0)


def test_the_cap_search_chooses_its_cuts_once_at_the_batch_it_is_given(monkeypatch):
    """Cuts balanced at batch 2 (weights and optimizer state dominate) are not the cuts a near-cap batch wants; the
    search balances them at `cut_batch` (the bench's --batch-size) and keeps them for every probe."""
    import benchmarks.memory as bm

    chosen, measured = [], []
    real_measure = bm.measure

    def choose(build, batch, method, num_blocks, balance, train=None):
        chosen.append(int(batch[0].shape[0]))
        return [1] * (num_blocks - 1) + [0]  # a marker: measure below must receive exactly these units

    def spy(build, batch, method, num_blocks=None, balance="memory", train=None, units=None, **kw):
        measured.append(units)
        return real_measure(build, batch, method, None, None, train=train, **kw)

    monkeypatch.setattr(bm, "choose_units", choose)
    monkeypatch.setattr(bm, "measure", spy)
    bm.largest_batch(_vgg, lambda n: _images(n, 16, 4), "deinforeg", 1e9, num_blocks=2, max_batch=8, cut_batch=6)
    assert chosen == [6]  # once, at the batch given, not at the search's first batch (2)
    assert measured and all(u == [1, 0] for u in measured)
    chosen.clear()
    bm.largest_batch(_vgg, lambda n: _images(n, 16, 4), "deinforeg", 1e9, num_blocks=2, max_batch=4)
    assert chosen == [2]  # default: the first batch
