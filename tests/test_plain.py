"""plain_cnn: split-equals-whole, gradient isolation, registry, layout errors, and what its initialisations do."""

from __future__ import annotations

import pytest
import torch

import zoo
from zoo.errors import UserError
from zoo.models.plain import PlainCNN
from zoo.train import TrainConfig, Trainer

IMG = 16


def _batch(n: int = 4, size: int = IMG) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, size, size, generator=g), torch.arange(n) % 4


def _tiny(method: str = "deinforeg", **kw) -> zoo.DecoupledModel:
    torch.manual_seed(0)
    kw = {"depth": 8, "width": 4, "layers_per_block": 2, **kw}
    return zoo.create_model("plain_cnn", method=method, num_classes=4, img_size=IMG, **kw)


def _copy_into(model: zoo.DecoupledModel, ref: PlainCNN) -> None:
    """Load the reference network's (perturbed) weights and BN statistics into the model's bodies, layer by layer."""
    mine = [t for b in model.blocks for t in b.body.state_dict().values()]
    theirs = list(ref.features.state_dict().values())
    assert [t.shape for t in mine] == [t.shape for t in theirs]
    with torch.no_grad():
        for a, b in zip(mine, theirs):
            a.copy_(b)
        if model.method == "bp":
            for a, b in zip(model.blocks[-1].head.module.state_dict().values(), ref.classifier.state_dict().values()):
                a.copy_(b)


@pytest.mark.parametrize("init", ["default", "kaiming"])
@pytest.mark.parametrize("norm", ["none", "bn"])
def test_bp_split_equals_whole(norm: str, init: str, perturb) -> None:
    model = _tiny("bp", norm=norm, init=init)
    torch.manual_seed(0)  # the same draws in the same order: the registered model is this network, cut
    ref = PlainCNN(8, 4, norm, init, num_classes=4)
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b)
    perturb(ref)
    _copy_into(model, ref)
    model.eval(), ref.eval()
    x, _ = _batch()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))
    assert model.num_blocks == 4 and sum(b.head is not None for b in model.blocks) == 1


@pytest.mark.parametrize("method", ["deinforeg", "greedy"])
@pytest.mark.parametrize("norm", ["none", "bn"])
def test_decoupled_blocks_chain_to_the_whole(method: str, norm: str, perturb) -> None:
    model = _tiny(method, norm=norm, init="kaiming")
    ref = PlainCNN(8, 4, norm, "kaiming", num_classes=4)
    perturb(ref)
    _copy_into(model, ref)
    model.eval(), ref.eval()
    x, _ = _batch()
    with torch.no_grad():
        h, feats = x, [x]
        for block in model.blocks:
            feats.append(block(feats))
        for k in range(model.num_blocks):  # block k ends after layer 2k+1 of the whole network
            h = ref.features[2 * k + 1](ref.features[2 * k](h))
            torch.testing.assert_close(feats[k + 1], h)
    assert all(b.head is not None for b in model.blocks)


@pytest.mark.parametrize("method", ["deinforeg", "greedy"])
def test_each_block_loss_reaches_only_its_block(method: str) -> None:
    model = _tiny(method)
    x, y = _batch()
    for k, loss in enumerate(model.local_losses(x, y)):
        model.zero_grad(set_to_none=True)
        loss.backward()
        for j, block in enumerate(model.blocks):
            touched = any(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())
            assert touched == (j == k), (k, j)


def test_bp_reaches_every_layer() -> None:
    model = _tiny("bp", init="kaiming")
    x, y = _batch()
    (loss,) = model.local_losses(x, y)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_registry_lists_it_for_classification_only() -> None:
    assert "plain_cnn" in zoo.list_models("plain*", task="cls")
    assert "plain_cnn" not in zoo.list_models("plain*", task="seg")
    with pytest.raises(UserError, match="classification model"):
        zoo.create_model("plain_cnn", task="seg")


def test_blocks_grow_with_depth_and_config_rebuilds() -> None:
    for depth, k in [(8, 2), (16, 4), (48, 12)]:
        model = zoo.create_model("plain_cnn", depth=depth, width=4, img_size=IMG, method="bp")
        assert model.num_blocks == k and model.config["layers_per_block"] == 4
    model = _tiny("greedy", depth=16, layers_per_block=None, num_blocks=2)
    assert model.num_blocks == 2 and model.config["layers_per_block"] == 8
    again = zoo.build_from_config(model.config)
    assert again.config == model.config
    assert [p.shape for p in again.parameters()] == [p.shape for p in model.parameters()]


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"depth": 10}, "depth=10 cannot be built"),
        ({"depth": 2}, "depth=2 is not possible"),
        ({"depth": 16.5}, "depth=16.5 is not possible"),
        ({"depth": 16, "layers_per_block": 3}, "layers_per_block=3 does not divide depth=16; valid: 1, 2, 4, 8, 16"),
        ({"depth": 16, "layers_per_block": 0}, "layers_per_block=0 is not possible"),
        ({"depth": 16, "num_blocks": 3}, "num_blocks=3 does not divide depth=16"),
        ({"depth": 16, "layers_per_block": 4, "num_blocks": 2}, "contradicts"),
        ({"depth": 8, "norm": "ln"}, "norm='ln' is unknown; valid choices: none, bn"),
        ({"depth": 8, "init": "xavier"}, "init='xavier' is unknown; valid choices: default, kaiming"),
        ({"depth": 8, "width": 0}, "width=0 is not possible"),
        ({"depth": 8, "img_size": 12}, "img_size=12 is not possible"),
        ({"depth": 8, "widht": 4}, "did you mean width"),
    ],
)
def test_impossible_layouts_are_one_line_user_errors(kw: dict, match: str) -> None:
    kw = {"img_size": IMG, **kw}
    with pytest.raises(UserError, match=match) as err:
        zoo.create_model("plain_cnn", method="deinforeg", **kw)
    assert "\n" not in str(err.value)


def _signal(init: str, depth: int, seed: int) -> tuple[float, float]:
    """RMS of the activation half way down a no-BN stack, and the across-sample std of its last layer's output."""
    torch.manual_seed(seed)
    net = PlainCNN(depth, 16, "none", init).eval()
    h, _ = _batch(8)
    with torch.no_grad():
        for i, layer in enumerate(net.features):
            h = layer(h)
            if i == depth // 2 - 1:
                mid = float(h.pow(2).mean().sqrt())
    return mid, float(h.std(dim=0).mean())


def test_kaiming_keeps_the_forward_signal_that_default_init_loses() -> None:
    # PyTorch's default conv init has weight variance 1/(3·fan_in): ~6x less second moment per conv+ReLU layer, so
    # at depth 16 the input is gone; He init (variance 2/fan_in) keeps it (the input's RMS is 1)
    for seed in range(3):
        k_mid, k_spread = _signal("kaiming", 16, seed)
        d_mid, d_spread = _signal("default", 16, seed)
        assert 0.2 < k_mid < 5.0, k_mid
        assert d_mid < 0.1, d_mid
        assert k_spread > 1e3 * d_spread, (k_spread, d_spread)


@pytest.mark.parametrize("method", ["bp", "deinforeg", "greedy"])
def test_one_training_step_is_finite(method: str) -> None:
    model = _tiny(method, norm="bn")
    trainer = Trainer(model, TrainConfig(), total_steps=1)
    out = trainer.train_step(*_batch())
    assert len(out["losses"]) == (1 if method == "bp" else 4)
    assert all(torch.isfinite(torch.tensor(v)) for v in out["losses"])
