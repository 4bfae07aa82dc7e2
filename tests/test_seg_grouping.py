"""SMP block grouping: several encoder stages per block, the decoder block taking the deepest stages (InfoPro's cut).

Split-equals-whole, gradient isolation, the pipeline on 2 stages, export, config rebuild and the bad groupings.
"""

from __future__ import annotations

import functools

import pytest
import torch
from _pipeline_setup import tiny

import zoo
from zoo.adapters import smp as smp_adapter
from zoo.decoupled import Features
from zoo.errors import UserError
from zoo.heads import DecodingHead, DenseLocalHead

torch.set_num_threads(1)
IMG = 64
C = 3


def _batch(n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, IMG, IMG, generator=g)
    y = torch.randint(0, C, (n, IMG, IMG), generator=g)
    y[0, :4, :4] = 255
    return x, y


@pytest.mark.parametrize(
    "kw,bodies",
    [
        ({"num_blocks": 2}, ["StageGroup", "SegDecoder"]),
        ({"num_blocks": 3}, ["StageGroup", "StageGroup", "SegDecoder"]),
        ({}, ["StageGroup", "SegDecoder"]),  # the default: K = 2
        ({"num_blocks": 6}, ["Sequential"] * 5 + ["SegDecoder"]),  # the first layout
        ({"block_units": [1, 4, 1]}, ["Sequential", "StageGroup", "SegDecoder"]),
    ],
)
def test_split_equals_whole(kw, bodies) -> None:
    torch.manual_seed(0)
    model = smp_adapter.create("resnet18", method="bp", num_classes=C, img_size=IMG, **kw)
    assert [type(b.body).__name__ for b in model.blocks] == bodies
    torch.manual_seed(0)  # same seed, same init: the grouped blocks must compute the SMP model
    ref = smp_adapter._new_smp("unet", "resnet18", C, 3, {}).eval()
    model.eval()
    x, _ = _batch()
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max() <= 1e-5


def test_infopro_cut_at_two_blocks() -> None:
    """K = 2 on ResNet: stem, layer1, layer2 | layer3, layer4, decoder; the first block hands on 3 features."""
    model = smp_adapter.create("resnet18", num_classes=C, img_size=IMG, num_blocks=2, head="pointwise")
    first, dec = model.blocks[0], model.blocks[1]
    assert first.num_outputs == 3 and len(dec.body.stages) == 2
    assert model.config["num_blocks"] == 2 and "block_units" not in model.config
    h = first([_batch()[0]])
    assert isinstance(h, Features) and [f.shape[1:] for f in h] == [(64, 32, 32), (64, 16, 16), (128, 8, 8)]
    assert isinstance(first.head, DenseLocalHead) and first.head.projector[0].in_channels == 128
    # a block of several stages hands each of them on detached
    assert all(not f.requires_grad for f in h.detach())


@pytest.mark.parametrize("head", ["pointwise", "decoding"])
@pytest.mark.parametrize("num_blocks", [2, 3])
def test_local_losses_isolated(num_blocks: int, head: str) -> None:
    torch.manual_seed(0)
    model = smp_adapter.create("resnet18", num_classes=C, img_size=IMG, num_blocks=num_blocks, head=head)
    x, y = _batch()
    losses = model.local_losses(x, y)
    assert len(losses) == num_blocks
    for k, loss in enumerate(losses):
        model.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        for j, block in enumerate(model.blocks):
            assert any(p.grad is not None for p in block.parameters()) == (j == k), (k, j)


def test_exits_and_adaptive_on_grouped_blocks() -> None:
    torch.manual_seed(0)
    model = smp_adapter.create("resnet18", num_classes=C, img_size=IMG, num_blocks=3, head="decoding").eval()
    x, _ = _batch()
    with torch.no_grad():
        preds = model.forward_blocks(x)
        assert [p.shape for p in preds] == [(2, C, IMG, IMG)] * 3
        model.set_best_block(0)
        model.exit_policy = "best"
        torch.testing.assert_close(model(x), preds[0])
        model.exit_policy = "adaptive"
        model.exit_confidence = 0.0  # every sample leaves at block 0: the Features are indexed per sample
        torch.testing.assert_close(model(x), preds[0])
        model.exit_confidence = 1.1  # none leaves early: the decoder reads the batch-indexed Features
        torch.testing.assert_close(model(x), preds[2], rtol=1e-4, atol=1e-5)


def test_export_and_config_rebuild_grouped(perturb) -> None:
    torch.manual_seed(0)
    model = smp_adapter.create(
        "resnet18", num_classes=C, img_size=IMG, block_units=[2, 2, 2], head="decoding", recon=0.5, width=32
    )
    assert model.config["block_units"] == [2, 2, 2] and model.config["head_kwargs"]["recon"] == 0.5
    assert isinstance(model.blocks[0].head, DecodingHead) and model.blocks[0].head.context[0].out_channels == 32
    perturb(model)
    x, _ = _batch()
    plain = smp_adapter.export(model)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(plain(x), model(x), atol=1e-5)
    again = smp_adapter.create(**model.config)
    assert again.state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"num_blocks": 1}, r"num_blocks=1 is not possible: .* from 2 .* to 6"),
        ({"num_blocks": 7}, r"num_blocks=7 is not possible"),
        ({"block_units": [2, 2]}, r"block_units=\[2, 2\] is not possible: .* summing to 6"),
        ({"block_units": [6]}, r"block_units=\[6\] is not possible"),
        ({"block_units": [3, 3], "num_blocks": 3}, r"and num_blocks=3"),
        ({"head": "pointwise", "recon": 0.1}, r"the pointwise dense head takes no keyword recon"),
        ({"head": "decoding", "pixel_per_image": 3}, r"no keyword pixel_per_image \(did you mean pixels_per_image\?\)"),
        ({"head": "dense"}, r"unknown dense head 'dense'"),
        ({"head": "decoding", "sampling": "rare"}, r"unknown pixel sampling 'rare'"),
        ({"head_kwargs": {"head": "decoding", "recon": -1}}, r"recon is a loss weight"),
    ],
)
def test_bad_groupings_and_head_options(kw, match) -> None:
    with pytest.raises(UserError, match=match) as err:
        smp_adapter.create("resnet18", num_classes=C, img_size=IMG, **kw)
    assert "\n" not in str(err.value)


def test_bad_head_option_refused_under_bp_too() -> None:
    """bp builds no local head, but the same flags must mean the same model for every method of a grid."""
    with pytest.raises(UserError, match="takes no keyword recon"):
        smp_adapter.create("resnet18", method="bp", num_classes=C, img_size=IMG, head="pointwise", recon=0.1)
    with pytest.raises(UserError, match="no keyword hidden_dim"):  # the default head is decoding
        smp_adapter.create("resnet18", method="bp", num_classes=C, img_size=IMG, hidden_dim=8)
    model = smp_adapter.create("resnet18", method="bp", num_classes=C, img_size=IMG, num_blocks=2, head="decoding")
    assert model.blocks[0].head is None


@pytest.mark.dist
def test_pipeline_two_stages_at_two_blocks_equals_single_process() -> None:
    """Stage 0 (stem..layer2) sends x and its 3 stage features; stage 1 (layer3, layer4, decoder) reads them."""
    from zoo.pipeline import launch, run_single, synthetic_batches

    builder = functools.partial(
        zoo.create_model, "resnet18", task="seg", num_classes=C, img_size=32, num_blocks=2, head="decoding"
    )
    batches = synthetic_batches(4, 3, img_size=32, num_classes=C, task="seg")
    cfg = tiny(steps=3, partition=[1, 1])
    result = launch(cfg, builder, batches)
    ref = run_single(cfg, builder, batches, "deinforeg")["model"].state_dict()
    ours = result.model.state_dict()
    assert ours.keys() == ref.keys()
    for k, v in ours.items():
        torch.testing.assert_close(v, ref[k], rtol=1e-5, atol=1e-6, msg=k)
    # x (3·32²) and the 3 features (64·16², 64·8², 128·4²) of 4 samples in float32, then the labels
    assert result.stages[0]["bytes_sent_per_step"] >= 4 * 4 * (3 * 32 * 32 + 64 * 256 + 64 * 64 + 128 * 16)


def test_profile_and_choose_seg_cuts() -> None:
    """The partitioner profiles grouped seg blocks (Features outputs) and chooses seg cuts as for classifiers: a
    model with one block per unit (stages + decoder) gives `units_per_block`, which is SMP's `block_units`."""
    from zoo.pipeline import choose_blocks, profile_units

    kw = dict(num_classes=C, img_size=32, encoder_depth=3, decoder_channels=(16, 8, 8))
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, C, (2, 32, 32))
    grouped = smp_adapter.create("resnet18", num_blocks=2, **kw)
    prof = profile_units(grouped, x, y, repeats=1)
    # block 0 (stem, layer1 | layer2 + decoder) hands on x and its 2 stage features (64·16², 64·8²), float32
    assert grouped.blocks[0].num_outputs == 2
    assert len(prof) == 2 and prof[0].out_bytes == 4 * 2 * (3 * 32 * 32 + 64 * 256 + 64 * 64)
    natural = smp_adapter.create("resnet18", num_blocks=4, **kw)
    cuts, _ = choose_blocks(natural, x, y, stages=2, repeats=1)
    assert len(cuts.units_per_block) == 2 and sum(cuts.units_per_block) == 4
    chosen = smp_adapter.create("resnet18", block_units=cuts.units_per_block, **kw)
    assert chosen.num_blocks == 2 and chosen.config["block_units"] == cuts.units_per_block


@pytest.mark.dist
def test_pipeline_partitions_a_grouped_seg_model_itself() -> None:
    """No `partition` given: stage 0 profiles the K = 2 blocks (Features outputs) and splits them over 2 stages."""
    from zoo.pipeline import launch, synthetic_batches

    builder = functools.partial(zoo.create_model, "resnet18", task="seg", num_classes=C, img_size=32, num_blocks=2)
    batches = synthetic_batches(4, 3, img_size=32, num_classes=C, task="seg")
    result = launch(tiny(steps=2, partition=None), builder, batches)
    assert result.partition == [1, 1] and len(result.stages) == 2


@pytest.mark.dist
def test_bp_over_torch_pipelining_on_a_grouped_seg_model() -> None:
    """GPipe sends flat tensors: block 0's 3 stage features travel as members and are rebuilt on stage 1."""
    from zoo.pipeline import launch, synthetic_batches

    builder = functools.partial(zoo.create_model, "resnet18", task="seg", num_classes=C, img_size=32, num_blocks=2)
    batches = synthetic_batches(4, 3, img_size=32, num_classes=C, task="seg")
    result = launch(tiny(engine="gpipe", steps=2, micro_batches=2, partition=[1, 1]), builder, batches)
    assert len(result.stages) == 2 and result.stages[-1]["samples_per_s"] > 0
    # x and the 3 features of 4 samples (2 micro-batches), forward and the same bytes of gradients back
    assert result.stages[0]["bytes_sent_per_step"] == 2 * 4 * 4 * (3 * 32 * 32 + 64 * 256 + 64 * 64 + 128 * 16)
    out = result.model.eval()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, C, 32, 32) and torch.isfinite(out).all()
