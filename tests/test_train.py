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
    trainer.fit(train_loader, val_loader, epochs=3)
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
