"""zoo.grow: appended blocks train while frozen ones stay bit-for-bit as trained, progressive depth, the growth
record rebuilds the architecture, bad growth gives one clear error."""

import copy
import json

import pytest
import torch

import zoo
from zoo.grow import GrowError, refresh_optimizers, regrow
from zoo.train import TrainConfig, Trainer, cosine_factor


def vgg(**kw):
    torch.manual_seed(0)
    return zoo.create_model("paper_vgg", num_classes=4, width=0.125, img_size=32, **kw)


def batch(n=4, size=32, seg=False):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, 3, (n, size, size), generator=g) if seg else torch.arange(n) % 4
    return x, y


def train(trainer, steps, seg=False):
    x, y = batch(seg=seg)
    for _ in range(steps):
        trainer.train_step(x, y)


def block_state(model, blocks):
    """Every parameter and buffer (BatchNorm statistics included) of `blocks`, cloned."""
    keep = tuple(f"blocks.{k}." for k in blocks)
    return {n: t.clone() for n, t in model.state_dict().items() if n.startswith(keep)}


def assert_unchanged(model, before):
    now = model.state_dict()
    changed = [n for n, t in before.items() if not torch.equal(now[n], t)]
    assert changed == []


def assert_all_changed_params(model, blocks, before):
    now = dict(model.named_parameters())
    same = [n for n, t in before.items() if n in now and torch.equal(now[n], t)]
    assert same == [] and any(n in now for n in before)


def block_params(model, k):
    return {id(p) for p in model.blocks[k].parameters()}


def opt_params(trainer):
    return {id(p) for o in trainer.optimizers for g in o.param_groups for p in g["params"]}


def opt_state_params(trainer):
    return {id(p) for o in trainer.optimizers for p in o.state}


def test_grow_conv_stage_trains_new_block_and_frozen_blocks_stay_bit_exact():
    model = vgg()
    train(Trainer(model, TrainConfig(), total_steps=4), 2)
    x, _ = batch()
    model.eval()
    with torch.no_grad():
        old_preds = model.forward_blocks(x)
    old = block_state(model, range(4))

    zoo.grow(model, [{"kind": "conv", "width": 16, "stride": 1}], freeze=[0, 1, 2, 3])
    assert model.num_blocks == 5 and model.trained_blocks() == [4]
    new = block_state(model, [4])
    trainer = Trainer(model, TrainConfig(), total_steps=4)
    assert opt_params(trainer) == block_params(model, 4)  # no optimizer (nor state) for frozen blocks
    train(trainer, 3)

    assert all(not m.training for k in range(4) for m in model.blocks[k].modules())  # eval kept under train()
    assert model.blocks[4].training
    assert all(p.grad is None and not p.requires_grad for k in range(4) for p in model.blocks[k].parameters())
    assert opt_state_params(trainer) <= block_params(model, 4)
    assert_unchanged(model, old)
    assert_all_changed_params(model, [4], new)
    model.eval()
    with torch.no_grad():
        preds = model.forward_blocks(x)
    for a, b in zip(old_preds, preds[:4]):
        assert torch.equal(a, b)  # the old exits give exactly the old logits
    assert preds[4].shape == (4, 4) and torch.equal(model(x), preds[4])


def test_growth_record_is_json_and_regrow_rebuilds_the_architecture():
    model = vgg()
    zoo.grow(model, [{"kind": "conv", "width": 16, "stride": 2, "depth": 2}], freeze=[0, 1])
    zoo.grow(model, [{"kind": "conv", "width": 8, "stride": 1}])
    record = json.loads(json.dumps(model.growth))
    assert record["parent"] == json.loads(json.dumps(vgg().config)) and record["keep"] is None
    assert record["added"] == [
        {"kind": "conv", "width": 16, "stride": 2, "depth": 2},
        {"kind": "conv", "width": 8, "stride": 1, "depth": 1},
    ]
    assert record["frozen"] == [0, 1] and record["active"] is None
    rebuilt = regrow(None, record)
    rebuilt.load_state_dict(model.state_dict())  # strict: the same architecture
    assert rebuilt.growth == record
    x, _ = batch()
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))
    # keep in a later round folds into the record: two parent blocks, then the new stage
    zoo.grow(model, [{"kind": "conv", "width": 8, "stride": 1}], keep=2)
    assert model.growth["keep"] == 2 and len(model.growth["added"]) == 1 and model.num_blocks == 3
    regrow(vgg(), model.growth).load_state_dict(model.state_dict())
    with pytest.raises(GrowError, match="already grown"):
        regrow(model, record)


def test_progressive_depth_trains_only_active_blocks():
    model = vgg()
    model.set_active(1)
    trainer = Trainer(model, TrainConfig(), total_steps=8)
    assert len(trainer.optimizers) == 1 and opt_params(trainer) == block_params(model, 0)
    rest = block_state(model, [1, 2, 3])
    b0 = block_state(model, [0])
    train(trainer, 2)
    assert_unchanged(model, rest)
    assert all(p.grad is None for k in (1, 2, 3) for p in model.blocks[k].parameters())
    assert_all_changed_params(model, [0], b0)
    x, _ = batch()
    model.eval()
    with torch.no_grad():
        preds = model.forward_blocks(x)
        assert preds[1:] == [None, None, None] and torch.equal(model(x), preds[0])
    assert trainer.evaluate([batch()], adaptive=True).per_block[0] is not None

    # block 2 joins, block 1 is overtaken and frozen: it only runs forward from now on
    model.set_active(2)
    zoo.freeze(model, [0])
    refresh_optimizers(trainer)
    assert opt_params(trainer) == block_params(model, 1) and opt_state_params(trainer) == set()
    b0, b1, rest = block_state(model, [0]), block_state(model, [1]), block_state(model, [2, 3])
    train(trainer, 2)
    assert_unchanged(model, b0)
    assert_unchanged(model, rest)
    assert_all_changed_params(model, [1], b1)

    # block 3 joins while block 2 keeps training: its optimizer state carries over, the new one starts fresh
    model.set_active(3)
    refresh_optimizers(trainer)
    assert len(trainer.optimizers) == 2
    kept, fresh = trainer.optimizers
    assert {int(s["step"]) for s in kept.state.values()} == {2} and not fresh.state
    expect = TrainConfig().lr * cosine_factor(4, 8, 0, TrainConfig().min_lr_ratio)
    assert fresh.param_groups[0]["lr"] == pytest.approx(expect)
    train(trainer, 1)
    record = model.growth
    assert (record["frozen"], record["active"], record["added"], record["keep"]) == ([0], 3, [], None)


def test_timm_resnet_grows_with_the_next_stages_of_a_larger_resnet():
    torch.manual_seed(0)
    model = zoo.create_model("resnet18", num_classes=4, img_size=32)
    x, _ = batch()
    zoo.grow(model, [], keep=2)
    model.eval()
    with torch.no_grad():
        old = model.forward_blocks(x)
    zoo.grow(model, [{"kind": "stages", "name": "resnet34", "stages": [2, 3]}], freeze=[0, 1])
    assert model.num_blocks == 4 and len(model.blocks[2].body.layer3) == 6  # resnet34's third stage: 6 basic blocks
    train(Trainer(model, TrainConfig(), total_steps=2), 1)
    model.eval()
    with torch.no_grad():
        preds = model.forward_blocks(x)
    assert torch.equal(old[0], preds[0]) and torch.equal(old[1], preds[1])
    rebuilt = regrow(None, json.loads(json.dumps(model.growth)))
    rebuilt.load_state_dict(model.state_dict())
    plain = zoo.export(model)  # no plain timm equivalent: the exit chain
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), preds[3])
        torch.testing.assert_close(plain(x), preds[3])


def test_remaining_stages_of_the_same_architecture():
    torch.manual_seed(0)
    model = zoo.create_model("paper_resnet18", num_classes=4, width=0.125, img_size=32)
    full = [tuple(p.shape) for p in model.parameters()]
    zoo.grow(model, [], keep=1)
    zoo.grow(model, [{"kind": "stages", "stages": [1, 2, 3]}])
    assert [tuple(p.shape) for p in model.parameters()] == full
    assert model.growth["added"][0] == {"kind": "stages", "name": None, "stages": [1], "kwargs": {}}


def test_shape_mismatch_names_both_shapes():
    model = vgg()
    before = copy.deepcopy(model.state_dict())
    spec = {"kind": "stages", "name": "paper_resnet18", "stages": [2], "kwargs": {"width": 0.125}}
    both = r"block 3 outputs \(64, 2, 2\), but stage 2 of paper_resnet18 expects \(16, 16, 16\)"
    with pytest.raises(GrowError, match=both):
        zoo.grow(model, [spec])
    assert model.num_blocks == 4 and model.growth is None and model.state_dict().keys() == before.keys()
    with pytest.raises(GrowError, match="valid keys"):
        zoo.grow(model, [{"kind": "conv", "width": 8, "strides": 2}])
    with pytest.raises(GrowError, match="'kind' in conv, stages"):
        zoo.grow(model, [{"kind": "mlp"}])
    with pytest.raises(GrowError, match="block 7 does not exist"):
        zoo.freeze(model, [7])
    with pytest.raises(GrowError, match="block 5 does not exist"):
        zoo.grow(model, [{"kind": "conv", "width": 8}], freeze=[5])
    assert model.num_blocks == 4 and model.growth is None
    with pytest.raises(GrowError, match="decoupled method"):
        zoo.grow(vgg(method="bp"), [{"kind": "conv", "width": 8}])
    with pytest.raises(ValueError, match="no head"):
        vgg(method="bp").set_active(1)


def seg_model():
    torch.manual_seed(0)
    kw = dict(encoder_depth=3, decoder_channels=(32, 16, 8), img_size=32)
    # the first layout (one block per stage): growing re-attaches the decoder to a stage-sized block
    return zoo.create_model("resnet18", task="seg", num_classes=3, num_blocks=4, head="pointwise", **kw)


def test_seg_decoder_is_reattached_to_a_refinement_stage():
    model = seg_model()
    x, y = batch(seg=True)
    model.eval()
    with torch.no_grad():
        old = model.forward_blocks(x)
    old_enc = block_state(model, [0, 1, 2])
    decoder = block_state(model, [3])
    zoo.grow(model, [{"kind": "conv", "width": 128, "stride": 1}], freeze=[0, 1, 2])
    assert model.num_blocks == 5 and model.blocks[-1].takes_skips
    assert model.blocks[-1].body.slots[-1] == ("block", 4)  # the decoder reads the new last encoder block
    assert model.trained_blocks() == [3, 4]
    trainer = Trainer(model, TrainConfig(), total_steps=2)
    trainer.train_step(x, y)
    model.eval()
    with torch.no_grad():
        preds = model.forward_blocks(x)
    assert all(torch.equal(a, b) for a, b in zip(old[:3], preds[:3]))
    assert preds[4].shape == (4, 3, 32, 32)
    assert_unchanged(model, old_enc)
    moved = {n.replace("blocks.3.", "blocks.4."): t for n, t in decoder.items()}
    assert_all_changed_params(model, [4], {n: t for n, t in moved.items() if "running" not in n})
    with pytest.raises(NotImplementedError, match="grown"):
        zoo.export(model)


def test_seg_deeper_stage_gives_the_decoder_error():
    model = seg_model()
    with pytest.raises(GrowError, match=r"unet decoder.*\(128, 4, 4\).*\(64, 2, 2\).*width 128 and stride 1"):
        zoo.grow(model, [{"kind": "conv", "width": 64, "stride": 2}])
    assert model.num_blocks == 4 and model.blocks[-1].body.slots[-1] == ("block", 3)
    with pytest.raises(GrowError, match="keep is for classification"):
        zoo.grow(model, [], keep=2)


def test_freeze_under_bp_trains_the_rest_end_to_end():
    model = vgg(method="bp")
    zoo.freeze(model, [0, 1])
    assert len(model.param_groups()) == 1 and model.trained_blocks() == [2, 3]
    frozen, rest = block_state(model, [0, 1]), block_state(model, [2, 3])
    train(Trainer(model, TrainConfig(), total_steps=2), 2)
    assert_unchanged(model, frozen)
    assert_all_changed_params(model, [2, 3], rest)
    assert model.growth["frozen"] == [0, 1] and model.growth["added"] == []
    zoo.freeze(model, [0, 1], frozen=False)
    assert model.growth is None and len(model.param_groups()[0]) == len(list(model.parameters()))
