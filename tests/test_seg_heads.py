"""Dense local heads of segmentation encoder blocks: each loss against its formula on a tiny input, the pixel
sampling, the DeInfoReg batch of a dense head, options and their errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zoo import losses
from zoo.errors import UserError
from zoo.heads import DecodingHead, DenseLocalHead, dense_head, dense_head_options, resize_mask, sample_pixels

torch.set_num_threads(1)
C = 3


def _input(b: int = 2, c: int = 8, s: int = 4, size: int = 16):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(b, c, s, s, generator=g)
    y = torch.randint(0, C, (b, size, size), generator=g)
    y[0, :3, :3] = 255
    x = torch.rand(b, 3, size, size, generator=g)
    return h, y, x


def test_pointwise_head_is_todays_formula() -> None:
    torch.manual_seed(0)
    head = DenseLocalHead("deinforeg", 8, C, pixels_per_image=5)
    h, y, _ = _input()
    torch.manual_seed(7)
    total, logits, parts = head.loss(h, y)
    ys = resize_mask(y, h.shape[-2:])
    zmap = head.projector(h)
    ce = F.cross_entropy(head.classifier(zmap), ys, ignore_index=255)
    torch.manual_seed(7)
    idx = sample_pixels(ys, 5, 255, balanced=False)
    z = zmap.permute(0, 2, 3, 1).reshape(-1, zmap.shape[1])[idx]
    ref = losses.deinforeg(z, ys.reshape(-1)[idx], C)  # B = the sampled pixels, as before
    torch.testing.assert_close(total, ref.total + 0.001 * ce)
    torch.testing.assert_close(parts["variance"], ref.variance)
    assert logits.shape == (2, C, 4, 4) and idx.numel() == 10


@pytest.mark.parametrize("recon", [0.0, 0.5])
def test_decoding_head_formula(recon: float) -> None:
    torch.manual_seed(0)
    head = DecodingHead("deinforeg", 8, C, width=6, convs=2, proj_dim=5, pixels_per_image=7, recon=recon)
    assert head.takes_image and (head.reconstruct is None) == (recon == 0)
    h, y, x = _input()
    torch.manual_seed(3)
    total, logits, parts = head.loss(h, y, image=x)
    feat = head.context(h)
    assert [type(m).__name__ for m in head.context] == ["Conv2d", "BatchNorm2d", "ReLU"] * 2
    assert head.context[0].kernel_size == (3, 3)
    zmap = head.projector(feat)
    up = F.interpolate(head.classifier(zmap), size=(16, 16), mode="bilinear", align_corners=False)
    ce = F.cross_entropy(up, y, ignore_index=255)  # every valid pixel at the mask's resolution
    torch.manual_seed(3)
    idx = sample_pixels(y, 7, 255, balanced=True)
    zup = F.interpolate(zmap, size=(16, 16), mode="bilinear", align_corners=False)
    z = zup.permute(0, 2, 3, 1).reshape(-1, 5)[idx]
    yz = y.reshape(-1)[idx]
    assert idx.numel() == 14 and not (yz == 255).any()
    # DeInfoReg by hand, the variance term divided by the 2 images, not the 14 pixels
    zn = F.normalize(z, dim=1)
    inv = (losses.similarity_matrix(F.one_hot(yz, C).float()) - losses.similarity_matrix(zn)).pow(2).mean()
    var = F.relu(1 - torch.sqrt(zn.var(0) + 1e-7)).mean() / 2
    cen = zn - zn.mean(0)
    cov = cen.t() @ cen / 14
    cov_term = (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / 5
    expected = inv + var + cov_term + 0.001 * ce
    if recon:
        rec = F.interpolate(head.reconstruct(feat), size=(16, 16), mode="bilinear", align_corners=False)
        mse = F.mse_loss(rec, x)
        expected = expected + recon * mse
        torch.testing.assert_close(parts["recon"], mse)
    else:
        assert "recon" not in parts
    torch.testing.assert_close(parts["variance"], var)
    torch.testing.assert_close(total, expected)
    assert logits.shape == (2, C, 4, 4)
    torch.testing.assert_close(head(h), head.classifier(head.projector(head.context(h))))
    # a caller without the image (a profiler) gets the loss without the reconstruction term
    torch.manual_seed(3)
    torch.testing.assert_close(head.loss(h, y)[0], expected - (recon * parts["recon"] if recon else 0.0))


def test_decoding_head_greedy_and_scpl() -> None:
    torch.manual_seed(0)
    h, y, _ = _input()
    greedy = DecodingHead("greedy", 8, C, width=4, proj_dim=4)
    total, _, parts = greedy.loss(h, y)
    up = F.interpolate(greedy(h), size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(total, F.cross_entropy(up, y, ignore_index=255))
    assert set(parts) == {"ce"}
    scpl = DecodingHead("scpl", 8, C, width=4, proj_dim=4)
    total, _, parts = scpl.loss(h, y)
    torch.testing.assert_close(total, parts["contrastive"] + parts["ce"])


def test_balanced_sampling_gives_each_class_of_an_image_equal_weight() -> None:
    y = torch.zeros(4000, 8, 8, dtype=torch.long)
    y[:, 0, 0] = 1  # one pixel of class 1 among 63 of background
    y[:, 7, 7] = 255
    torch.manual_seed(0)
    first = y.reshape(-1)[sample_pixels(y, 1, 255, balanced=True)]
    assert 0.46 < float((first == 1).float().mean()) < 0.54  # half the draws, not 1/63
    torch.manual_seed(0)
    uniform = y.reshape(-1)[sample_pixels(y, 1, 255, balanced=False)]
    assert float((uniform == 1).float().mean()) < 0.04
    for bal in (False, True):  # void pixels are never drawn, and a draw never repeats a pixel
        idx = sample_pixels(y[:5], 64, 255, balanced=bal)
        assert idx.numel() == 5 * 63 and idx.unique().numel() == idx.numel()
        assert not (y.reshape(-1)[idx] == 255).any()


def test_balanced_sampling_on_shapes_masks() -> None:
    """The measurement behind the decoding head's default: more shape pixels per image than a uniform draw."""
    import datasets.embedded as embedded

    _, masks = embedded.generate_shapes("train", 64)
    m = masks.long()
    counts = {}
    for bal in (False, True):
        torch.manual_seed(0)
        ys = m.reshape(-1)[sample_pixels(m, 128, 255, balanced=bal)]
        counts[bal] = torch.bincount(ys, minlength=4).float() / len(m)
    assert counts[False][0] > 70 and counts[True][0] < 50  # background per image
    assert (counts[True][1:] > 1.5 * counts[False][1:]).all()


def test_deinforeg_batch_scales_the_variance_term_only() -> None:
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(12, 4, generator=g), torch.arange(12) % 3
    rows, images = losses.deinforeg(z, y, 3), losses.deinforeg(z, y, 3, batch=2)
    torch.testing.assert_close(images.variance, rows.variance * 12 / 2)
    torch.testing.assert_close(images.invariance, rows.invariance)
    torch.testing.assert_close(images.covariance, rows.covariance)
    with pytest.raises(ValueError, match="batch must be at least 1"):
        losses.deinforeg(z, y, 3, batch=0)


def test_dense_head_factory_and_options() -> None:
    assert isinstance(dense_head("deinforeg", 8, C), DenseLocalHead)  # pointwise stays the default
    head = dense_head("greedy", 8, C, head="decoding", recon=0.2)
    assert isinstance(head, DecodingHead) and head.recon == 0.2 and head.sampling == "balanced"
    assert DecodingHead("deinforeg", 8, C).reconstruct is None  # the reconstruction term is off by default
    assert {"head", "recon", "width", "convs", "sampling", "pixels_per_image"} <= set(dense_head_options())
    assert "recon" not in dense_head_options("pointwise")
    with pytest.raises(UserError, match="pointwise dense head takes no keyword recon"):
        dense_head("deinforeg", 8, C, recon=0.1)
    with pytest.raises(UserError, match="decoding head needs convs >= 1"):
        dense_head("deinforeg", 8, C, head="decoding", convs=0)
