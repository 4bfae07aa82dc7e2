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
