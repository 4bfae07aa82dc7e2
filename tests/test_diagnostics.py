"""zoo.diagnostics: per-layer gradient norms (callback and one-off), forward scales, and the plot."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

import zoo
from zoo.diagnostics import GradNorms, activation_scales, grad_norms_at, plot_grad_norms, weight_layers
from zoo.train import TrainConfig, Trainer

IMG = 16


def _batch(n: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, IMG, IMG, generator=g), torch.arange(n) % 4


def _tiny(method: str, depth: int = 8, **kw) -> zoo.DecoupledModel:
    torch.manual_seed(0)
    kw = {"width": 4, "layers_per_block": 2, **kw}
    return zoo.create_model("plain_cnn", method=method, num_classes=4, img_size=IMG, depth=depth, **kw)


def test_weight_layers_are_the_backbone_in_forward_order() -> None:
    model = _tiny("deinforeg")
    layers = weight_layers(model)
    assert [la.index for la in layers] == list(range(8))
    assert [la.block for la in layers] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert all(isinstance(la.module, torch.nn.Conv2d) and ".body." in la.name for la in layers)


@pytest.mark.parametrize("method", ["bp", "deinforeg"])
def test_callback_records_the_gradients_the_trainer_used(method: str) -> None:
    model = _tiny(method, norm="bn")
    twin = copy.deepcopy(model)
    batches = [_batch(seed=s) for s in range(4)]
    logged: list[tuple[dict, int]] = []
    cb = GradNorms(steps=[0, 2], log=lambda data, step=None: logged.append((data, step)))
    Trainer(model, TrainConfig(optimizer="sgd", lr=0.05), total_steps=4).fit(batches, 1, callbacks=[cb])
    assert [r.step for r in cb.records] == [0, 2]
    # step 0's gradient is the initial weights' gradient on the first batch
    torch.testing.assert_close(torch.tensor(cb.records[0].grad_norms), torch.tensor(grad_norms_at(twin, *batches[0])))
    assert cb.records[0].grad_norms != cb.records[1].grad_norms  # the weights moved in between
    assert len(logged) == 2 and logged[1][1] == 3  # logged at the trainer's step count
    assert set(logged[0][0]) == {f"grad_norm/layer{i:02d}" for i in range(1, 9)} | {"grad_norm/step"}
    json.dumps(cb.as_dict())


def test_every_records_periodically() -> None:
    cb = GradNorms(steps=[], every=2)
    Trainer(_tiny("greedy"), TrainConfig(), total_steps=5).fit([_batch()] * 5, 1, callbacks=[cb])
    assert [r.step for r in cb.records] == [0, 2, 4]


def test_decoupled_layers_get_only_their_own_blocks_loss() -> None:
    model = _tiny("deinforeg")
    x, y = _batch()
    norms = grad_norms_at(model, x, y)
    layers = weight_layers(model)
    for k, loss in enumerate(model.local_losses(x, y)):
        model.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        for la in layers:
            if la.block == k:
                assert math.isclose(float(la.module.weight.grad.norm()), norms[la.index], rel_tol=1e-5)


def test_bp_gradients_vanish_in_a_deep_default_init_stack_and_local_losses_reach_block_one() -> None:
    x, y = _batch(8)
    bp = grad_norms_at(_tiny("bp", depth=16, width=8, layers_per_block=4), x, y)
    dec = grad_norms_at(_tiny("deinforeg", depth=16, width=8, layers_per_block=4), x, y)
    assert bp[0] < 1e-2 * bp[-1]  # the first layer's gradient is orders of magnitude below the last layer's
    assert dec[0] > 1e2 * bp[0]  # block 1's own loss is four layers away


def test_activation_scales_show_the_starved_forward_signal() -> None:
    x, _ = _batch(8)
    default = activation_scales(_tiny("bp", depth=16, width=8), x)
    he = activation_scales(_tiny("bp", depth=16, width=8, init="kaiming"), x)
    assert len(default) == len(he) == 16
    assert default[-1].spread < 1e-3 * he[-1].spread
    assert default[-1].rms > 10 * default[-1].spread  # what is left is the biases, the same for every input


def test_plot_writes_an_image(tmp_path) -> None:
    out = plot_grad_norms(
        {"bp": [1e-7, 1e-5, math.nan, 1e-2], "deinforeg": [1.0, 0.5, 0.8, 0.0]}, tmp_path / "g.png", "t", [2]
    )
    assert out.exists() and out.stat().st_size > 1000
