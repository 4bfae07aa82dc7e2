"""DecoupledModel behaviour: gradient isolation, BP end to end, per-block stepping, exit policies, bad input."""

import copy

import pytest
import torch

import zoo
from zoo.decoupled import Block, DecoupledModel, merge_units
from zoo.heads import DenseLocalHead, TaskHead
from zoo.train import TrainConfig, Trainer, build_optimizers


def tiny(method="deinforeg", name="paper_vgg", **kw):
    torch.manual_seed(0)
    return zoo.create_model(name, method=method, num_classes=4, width=0.125, img_size=16, **kw)


def batch(n=6, size=16):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, size, size, generator=g), torch.arange(n) % 4


def block_of(model: DecoupledModel) -> dict[str, int]:
    return {name: int(name.split(".")[1]) for name, _ in model.named_parameters()}


@pytest.mark.parametrize("method", ["deinforeg", "greedy", "scpl"])
@pytest.mark.parametrize("name", ["paper_vgg", "paper_resnet18"])
def test_block_loss_only_reaches_its_own_block(method, name):
    model = tiny(method, name)
    x, y = batch()
    owner = block_of(model)
    for k in range(model.num_blocks):
        model.zero_grad(set_to_none=True)
        model.local_losses(x, y)[k].backward()
        touched = {owner[n] for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert touched == {k}


def test_scaling_one_block_loss_changes_no_other_gradient():
    model = tiny("deinforeg")
    x, y = batch()
    model.zero_grad()
    sum(model.local_losses(x, y)).backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    losses = model.local_losses(x, y)
    losses[1] = losses[1] * 7.0
    sum(losses).backward()
    owner = block_of(model)
    for n, p in model.named_parameters():
        if owner[n] == 1:
            assert not torch.allclose(p.grad, ref[n])
        else:
            torch.testing.assert_close(p.grad, ref[n])


@pytest.mark.parametrize("name", ["paper_vgg", "paper_resnet18"])
def test_bp_gives_every_parameter_a_gradient_from_the_final_loss(name):
    model = tiny("bp", name)
    x, y = batch()
    losses = model.local_losses(x, y)
    assert len(losses) == 1
    losses[0].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_summed_backward_equals_stepping_each_block_alone():
    x, y = batch()
    a = tiny("deinforeg")
    b = copy.deepcopy(a)
    cfg = TrainConfig(optimizer="sgd", lr=0.1)
    opt_a, _ = build_optimizers(a, cfg, 10)
    opt_b, _ = build_optimizers(b, cfg, 10)
    sum(a.local_losses(x, y)).backward()
    for o in opt_a:
        o.step()
    # each block backwards its own loss and steps right away, before the next block's backward (as a pipeline
    # stage would); the graphs are disjoint, so stepping block k cannot change what block k+1 computes
    losses = b.local_losses(x, y)
    for k, o in enumerate(opt_b):
        losses[k].backward()
        o.step()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa, pb, msg=n)


def test_param_groups_per_block_and_shared_under_bp():
    dec, bp = tiny("deinforeg"), tiny("bp")
    assert len(dec.param_groups()) == dec.num_blocks
    assert len(bp.param_groups()) == 1
    assert sum(len(g) for g in dec.param_groups()) == len(list(dec.parameters()))


def test_forward_blocks_and_exits():
    model = tiny("deinforeg").eval()
    x, _ = batch()
    preds = model.forward_blocks(x)
    assert len(preds) == model.num_blocks and all(p.shape == (6, 4) for p in preds)
    torch.testing.assert_close(model(x), preds[-1])
    model.set_best_block(1)
    model.exit_policy = "best"
    torch.testing.assert_close(model(x), preds[1])


def test_adaptive_always_exit_uses_block_one():
    model = tiny("deinforeg").eval()
    x, _ = batch()
    model.exit_policy = "adaptive"
    model.exit_confidence = 0.0
    out = model(x)
    assert model.last_mean_depth == 1.0
    torch.testing.assert_close(out, model.forward_blocks(x)[0])


def test_adaptive_never_exit_equals_last():
    model = tiny("deinforeg").eval()
    x, _ = batch()
    model.exit_confidence, model.exit_similarity = 2.0, 2.0
    last = model(x)
    model.exit_policy = "adaptive"
    torch.testing.assert_close(model(x), last)
    assert model.last_mean_depth == model.num_blocks


def test_adaptive_decides_per_sample():
    model = tiny("deinforeg").eval()
    x, _ = batch(8)
    blocks = model.forward_blocks(x)
    conf1 = blocks[0].detach().softmax(1).max(1).values
    model.exit_policy = "adaptive"
    model.exit_similarity = 2.0
    model.exit_confidence = float(conf1.median().detach())
    out = model(x)
    early = conf1 >= model.exit_confidence
    assert 0 < int(early.sum()) < 8
    torch.testing.assert_close(out[early], blocks[0][early])
    assert (model.last_exit_depth[early] == 1).all() and (model.last_exit_depth[~early] > 1).all()


def test_adaptive_from_block_predictions_equals_adaptive_forward():
    model = tiny("deinforeg").eval()
    x, _ = batch(8)
    with torch.no_grad():
        conf1 = model.forward_blocks(x)[0].softmax(1).max(1).values
        model.exit_confidence, model.exit_similarity = float(conf1.median()), 0.9
        model.exit_policy = "adaptive"
        out = model(x)
        depth = model.last_exit_depth.clone()
        derived = model.adaptive_from_blocks(model.forward_blocks(x))
    assert 1 < float(depth.float().mean()) < model.num_blocks  # some samples leave early, some do not
    torch.testing.assert_close(derived, out)
    assert torch.equal(model.last_exit_depth, depth)


def test_exit_block_follows_the_policy():
    model = tiny("deinforeg")
    assert model.exit_block == model.num_blocks - 1
    model.set_best_block(1)
    model.exit_policy = "best"
    assert model.exit_block == 1
    model.exit_policy = "adaptive"
    with pytest.raises(ValueError, match="adaptive"):
        _ = model.exit_block


def test_bad_method_exit_policy_and_batches():
    with pytest.raises(ValueError, match="valid choices: bp, deinforeg, greedy, scpl"):
        tiny("backprop")
    model = tiny("deinforeg")
    with pytest.raises(ValueError, match="valid choices: last, best, adaptive"):
        model.exit_policy = "first"
    with pytest.raises(ValueError, match="adaptive"):
        tiny("bp").exit_policy = "adaptive"
    x, _ = batch()
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        model.local_losses(x, torch.tensor([0, 1, 2, 3, 4, 0]))
    with pytest.raises(ValueError, match="empty"):
        model.local_losses(x[:0], torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="size 1"):
        model.local_losses(x[:1], torch.tensor([0]))


def test_merge_units_and_num_blocks():
    blocks, ends = merge_units([torch.nn.Identity()] * 5, 2)
    assert len(blocks) == 2 and ends == [1, 4]
    with pytest.raises(ValueError, match="1 to 4 blocks"):
        tiny(num_blocks=5)
    assert tiny(num_blocks=2).num_blocks == 2


def test_dense_head_samples_bounded_pixels_and_resizes_labels():
    head = DenseLocalHead("deinforeg", 8, 3, pixels_per_image=5)
    h = torch.randn(2, 8, 4, 4)
    mask = torch.randint(0, 3, (2, 16, 16))
    mask[0, :8] = 255
    loss, logits, parts = head.loss(h, mask)
    assert logits.shape == (2, 3, 4, 4) and torch.isfinite(loss)
    assert set(parts) >= {"invariance", "variance", "covariance", "ce"}
    idx = head._sample(torch.randint(0, 3, (2, 4, 4)))
    assert idx.numel() == 10 and idx.unique().numel() == 10
    void = torch.randint(0, 3, (3, 4, 4))
    void[1] = 255  # nothing to sample
    void[2, :3] = 255  # only 4 valid pixels
    idx = head._sample(void)
    assert idx.numel() == 5 + 0 + 4
    assert (void.reshape(-1)[idx] != 255).all()


def test_segmentation_decoder_block_reads_detached_skips():
    enc1 = torch.nn.Conv2d(3, 4, 3, 2, 1)
    enc2 = torch.nn.Conv2d(4, 4, 3, 2, 1)

    class Dec(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(8, 3, 1)

        def forward(self, feats):
            up = torch.nn.functional.interpolate(feats[2], size=feats[1].shape[-2:])
            return self.conv(torch.cat([feats[1], up], 1))

    blocks = [
        Block(enc1, DenseLocalHead("deinforeg", 4, 3)),
        Block(enc2, DenseLocalHead("deinforeg", 4, 3)),
        Block(Dec(), TaskHead(dice=True, ignore_index=255), takes_skips=True),
    ]
    model = DecoupledModel(blocks, "deinforeg", "seg", 3)
    x, y = torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16))
    losses = model.local_losses(x, y)
    model.zero_grad()
    losses[2].backward()
    assert enc1.weight.grad is None and enc2.weight.grad is None
    assert blocks[2].body.conv.weight.grad is not None
    assert [p.shape for p in model.forward_blocks(x)] == [(2, 3, 16, 16)] * 3


def test_trainer_stops_on_non_finite_loss_before_any_optimizer_step():
    model = tiny("deinforeg")
    trainer = Trainer(model, TrainConfig(), total_steps=5)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    x, y = batch()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(zoo.train.NonFiniteLossError, match=r"block 1 \(method deinforeg\) at step 0"):
        trainer.train_step(x, y)
    for k, v in model.named_parameters():
        torch.testing.assert_close(v, before[k])


@pytest.mark.parametrize("opt", ["sgd", "adamw", "lars"])
def test_optimizers_and_cosine_schedule(opt):
    model = tiny("greedy")
    trainer = Trainer(model, TrainConfig(optimizer=opt, lr=0.05, min_lr_ratio=0.01), total_steps=4)
    x, y = batch()
    for _ in range(4):
        trainer.train_step(x, y)
    assert len(trainer.optimizers) == model.num_blocks
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05 * 0.01)
    with pytest.raises(ValueError, match="valid choices: sgd, adamw, lars"):
        TrainConfig(optimizer="adam")


def test_block_rng_streams_depend_only_on_seed_step_and_block():
    from zoo.decoupled import block_rng, block_seed

    cpu = torch.device("cpu")
    before = torch.get_rng_state()
    with block_rng(block_seed(0, 3, 1), cpu):
        a = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's stream is untouched
    torch.rand(10)  # draws elsewhere (other blocks, other processes) change nothing
    with block_rng(block_seed(0, 3, 1), cpu):
        assert torch.equal(torch.rand(4), a)
    for other in (block_seed(0, 4, 1), block_seed(0, 3, 2), block_seed(1, 3, 1)):
        with block_rng(other, cpu):
            assert not torch.equal(torch.rand(4), a)
