"""A short run on the embedded digits data really learns, for BP and DeInfoReg (validation accuracy per block)."""

import pytest
import torch

import zoo
from datasets import create_dataset, create_loader
from zoo.train import TrainConfig, Trainer, seed_everything


@pytest.mark.parametrize("method", ["deinforeg", "bp"])
def test_short_digits_run_learns(method, capsys):
    seed_everything(0)
    train = create_dataset("digits", "train", image_size=16)
    val = create_dataset("digits", "val", image_size=16)
    train_loader = create_loader(train, 64, shuffle=True, seed=0, drop_last=True)
    val_loader = create_loader(val, 256)
    model = zoo.create_model("paper_vgg", method=method, num_classes=10, width=0.125, img_size=16)
    trainer = Trainer(model, TrainConfig(lr=3e-3), total_steps=3 * len(train_loader))
    trainer.fit(train_loader, epochs=3, val=val_loader)
    printed = capsys.readouterr().out
    assert "val accuracy per block" in printed
    result = trainer.evaluate(val_loader)
    print(method, result.per_block)
    # chance is 10%; three short epochs of a tiny VGG reach far above it
    assert result.last > 80.0
    if method == "deinforeg":
        assert all(v is not None and v > 40.0 for v in result.per_block)
        assert result.adaptive is not None and 1.0 <= result.adaptive_depth <= model.num_blocks
    assert 0 <= int(model.best_block) < model.num_blocks
    assert torch.isfinite(torch.tensor(result.last))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_fused_optimizer_steps_match_the_per_tensor_loop(optimizer):
    from zoo.train import build_optimizers

    model = zoo.create_model("paper_vgg", width=0.125, num_classes=10, img_size=16)
    cfg = TrainConfig(optimizer=optimizer, lr=0.05, weight_decay=5e-4)
    fused, _ = build_optimizers(model, cfg, 10)
    assert all(o.defaults.get("fused") for o in fused)  # CPU parameters get torch's fused kernel
    twin = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    params = dict(model.named_parameters())
    kind = torch.optim.SGD if optimizer == "sgd" else torch.optim.AdamW
    extra = {"momentum": cfg.momentum} if optimizer == "sgd" else {}
    loop = kind(list(twin.values()), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False, **extra)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for n, p in params.items():
            p.grad = torch.randn(p.shape, generator=g)
            twin[n].grad = p.grad.clone()
        for o in fused:
            o.step()
        loop.step()
    for n, p in params.items():
        torch.testing.assert_close(p.detach(), twin[n].detach(), rtol=1e-5, atol=1e-6, msg=n)


# -- block-by-block backward ---------------------------------------------------------------------------------------
BUILDERS = {
    "timm": lambda method: zoo.create_model("resnet18", method=method, num_classes=4, img_size=32),
    "smp": lambda method: zoo.create_model(
        "resnet18", task="seg", method=method, num_classes=3, encoder_depth=3, decoder_channels=(32, 16, 8)
    ),
    "paper": lambda method: zoo.create_model("paper_resnet18", method=method, num_classes=4, width=0.125),
}


def _batch(kind: str, n: int = 4):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 3, (n, 32, 32), generator=g) if kind == "smp" else torch.arange(n) % 4
    return x, y


def _train(kind: str, method: str, backward: str, steps: int = 3, grow=None):
    torch.manual_seed(0)
    model = BUILDERS[kind](method)
    if grow is not None:
        grow(model)
    torch.manual_seed(5)
    cfg = TrainConfig(optimizer="adamw", lr=1e-2, grad_clip=0.5, backward=backward)
    trainer = Trainer(model, cfg, total_steps=10)
    x, y = _batch(kind)
    losses = [trainer.train_step(x, y)["losses"] for _ in range(steps)]
    return model, losses


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sb = b.state_dict()
    for name, v in a.state_dict().items():
        assert torch.equal(v, sb[name]), name  # weights and BatchNorm statistics, bit for bit


@pytest.mark.parametrize("method", ["deinforeg", "greedy", "scpl", "bp"])
@pytest.mark.parametrize("kind", ["timm", "smp", "paper"])
def test_blockwise_backward_gives_the_summed_backwards_weights(kind, method):
    summed, summed_losses = _train(kind, method, "summed")
    blockwise, blockwise_losses = _train(kind, method, "blockwise")
    assert summed_losses == blockwise_losses
    _assert_same_state(summed, blockwise)
    start = BUILDERS[kind](method)
    assert not all(torch.equal(v, summed.state_dict()[n]) for n, v in start.state_dict().items())  # it trained


@pytest.mark.parametrize("backward", ["blockwise", "summed"])
def test_blockwise_backward_frees_each_graph_before_the_next_block_runs(backward):
    torch.manual_seed(0)
    model = BUILDERS["paper"]("deinforeg")
    trainer = Trainer(model, TrainConfig(backward=backward), total_steps=2)
    done = []  # when block k starts its forward: had every earlier block backpropagated (first step: no old grads)?
    for k, block in enumerate(model.blocks):
        block.register_forward_pre_hook(
            lambda mod, args, k=k: done.append(
                all(p.grad is not None for b in model.blocks[:k] for p in b.parameters())
            )
        )
    trainer.train_step(*_batch("paper"))
    n = model.num_blocks
    assert done == ([True] * n if backward == "blockwise" else [True] + [False] * (n - 1))


def test_grown_models_frozen_blocks_run_without_autograd_under_blockwise_backward():
    def grow(model):
        zoo.grow(model, [{"kind": "conv", "width": 16}], freeze=[0, 1])

    grad_mode = []
    summed, _ = _train("paper", "deinforeg", "summed", grow=grow)
    torch.manual_seed(0)
    model = BUILDERS["paper"]("deinforeg")
    grow(model)
    before = {n: v.clone() for n, v in model.blocks[:2].state_dict().items()}
    for block in model.blocks[:2]:
        block.body.register_forward_hook(lambda *_: grad_mode.append(torch.is_grad_enabled()))
    torch.manual_seed(5)
    trainer = Trainer(model, TrainConfig(optimizer="adamw", lr=1e-2, grad_clip=0.5), total_steps=10)
    x, y = _batch("paper")
    for _ in range(3):
        trainer.train_step(x, y)
    assert grad_mode == [False] * 6
    _assert_same_state(summed, model)
    assert all(torch.equal(v, model.blocks[:2].state_dict()[n]) for n, v in before.items())


def test_a_nan_in_a_later_block_raises_before_any_block_steps():
    from zoo.train import NonFiniteLossError

    torch.manual_seed(0)
    model = BUILDERS["paper"]("deinforeg")
    trainer = Trainer(model, TrainConfig(), total_steps=2)
    with torch.no_grad():
        next(model.blocks[2].head.parameters()).fill_(float("nan"))
    before = {n: v.clone() for n, v in model.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match="block 3"):
        trainer.train_step(*_batch("paper"))
    params = dict(model.named_parameters())
    for n, v in model.state_dict().items():
        if n in params:  # a forward still updates BatchNorm statistics, as the summed path does
            assert torch.equal(v, before[n]) or torch.isnan(before[n]).any(), n
    assert all(not o.state for o in trainer.optimizers) and trainer.step == 0


def test_bad_backward_is_a_user_error():
    from zoo.errors import UserError

    with pytest.raises(UserError, match="unknown backward 'sum'"):
        TrainConfig(backward="sum")
