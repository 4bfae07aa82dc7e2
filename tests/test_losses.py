"""The local losses against their formulas: hand-checked cases and an independent loop implementation."""

import math

import pytest
import torch
import torch.nn.functional as F

from zoo import losses


def _pearson_loop(rows: torch.Tensor) -> torch.Tensor:
    """Sample-to-sample Pearson correlation, one pair at a time (float64)."""
    n = rows.shape[0]
    out = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            a = rows[i].double() - rows[i].double().mean()
            b = rows[j].double() - rows[j].double().mean()
            den = a.norm() * b.norm()
            out[i, j] = 0.0 if den == 0 else max(-1.0, min(1.0, float((a * b).sum() / den)))
    return out


def _reference(z: torch.Tensor, y: torch.Tensor, c: int) -> tuple[float, float, float]:
    """DESIGN.md's formula written out with explicit loops in float64."""
    b, d = z.shape
    zn = z.double() / z.double().norm(dim=1, keepdim=True)
    onehot = torch.zeros(b, c, dtype=torch.float64)
    for i in range(b):
        onehot[i, int(y[i])] = 1.0
    s_y, s_z = _pearson_loop(onehot), _pearson_loop(zn)
    inv = sum(float((s_y[i, j] - s_z[i, j]) ** 2) for i in range(b) for j in range(b)) / (b * b)
    var = 0.0
    for k in range(d):
        col = zn[:, k]
        m = float(col.mean())
        v = sum((float(x) - m) ** 2 for x in col) / (b - 1)
        var += max(0.0, 1.0 - math.sqrt(v + 1e-7))
    var = var / d / b
    mean = zn.mean(dim=0)
    cov = 0.0
    for i in range(d):
        for j in range(d):
            if i != j:
                cij = sum(float((zn[n, i] - mean[i]) * (zn[n, j] - mean[j])) for n in range(b)) / b
                cov += cij**2
    return inv, var, cov / d


@pytest.mark.parametrize("seed", [0, 1])
def test_deinforeg_matches_independent_implementation(seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(6, 5, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    out = losses.deinforeg(z, y, 3)
    inv, var, cov = _reference(z, y, 3)
    assert out.invariance.item() == pytest.approx(inv, rel=1e-4, abs=1e-6)
    assert out.variance.item() == pytest.approx(var, rel=1e-4, abs=1e-7)
    assert out.covariance.item() == pytest.approx(cov, rel=1e-4, abs=1e-7)
    assert out.total.item() == pytest.approx(inv + var + cov, rel=1e-4)


def test_label_aligned_embeddings_give_zero_invariance():
    # embeddings equal to the one-hot labels have exactly the label similarity matrix
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    z = F.one_hot(y, 4).float() * 3.0
    assert losses.deinforeg(z, y, 4).invariance.item() == pytest.approx(0.0, abs=1e-6)


def test_collapsed_embeddings_give_largest_variance_term():
    b, d = 8, 4
    y = torch.arange(b) % 2
    collapsed = torch.ones(b, d)
    spread = torch.randn(b, d, generator=torch.Generator().manual_seed(0))
    v_collapsed = losses.deinforeg(collapsed, y, 2).variance.item()
    # every std is sqrt(1e-7): the hinge is at its maximum, (1 - sqrt(1e-7)) / B
    assert v_collapsed == pytest.approx((1 - math.sqrt(1e-7)) / b, rel=1e-5)
    assert losses.deinforeg(spread, y, 2).variance.item() < v_collapsed


def test_weights_are_configurable():
    z, y = torch.randn(6, 5), torch.tensor([0, 1, 0, 1, 0, 1])
    full = losses.deinforeg(z, y, 2)
    only_inv = losses.deinforeg(z, y, 2, weights=(1.0, 0.0, 0.0))
    assert only_inv.total.item() == pytest.approx(full.invariance.item())


def test_bfloat16_is_safe_and_close_to_float32():
    z = torch.randn(16, 32, generator=torch.Generator().manual_seed(3))
    y = torch.arange(16) % 4
    ref = losses.deinforeg(z, y, 4)
    low = losses.deinforeg(z.bfloat16(), y, 4)
    assert torch.isfinite(low.total)
    assert low.total.item() == pytest.approx(ref.total.item(), rel=2e-2)
    assert torch.isfinite(losses.scpl(z.bfloat16(), y, 4))


@pytest.mark.parametrize("fn", ["deinforeg", "scpl"])
def test_bad_inputs_raise_value_error(fn):
    f = getattr(losses, fn)
    with pytest.raises(ValueError, match="size 1"):
        f(torch.randn(1, 4), torch.tensor([0]), 4)
    with pytest.raises(ValueError, match="empty"):
        f(torch.randn(0, 4), torch.zeros(0, dtype=torch.long), 4)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        f(torch.randn(3, 4), torch.tensor([0, 1, 4]), 4)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        f(torch.randn(3, 4), torch.tensor([0, -1, 2]), 4)


def test_scpl_matches_formula():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 3, generator=g)
    y = torch.tensor([0, 0, 1, 1, 2])
    zn = F.normalize(z, dim=1).double()
    total, anchors = 0.0, 0
    for i in range(5):
        pos = [j for j in range(5) if j != i and y[j] == y[i]]
        if not pos:
            continue
        denom = sum(math.exp(float(zn[i] @ zn[a]) / 0.1) for a in range(5) if a != i)
        total += -sum(math.log(math.exp(float(zn[i] @ zn[p]) / 0.1) / denom) for p in pos) / len(pos)
        anchors += 1
    assert losses.scpl(z, y, 3).item() == pytest.approx(total / anchors, rel=1e-5)


def test_scpl_without_positives_is_zero_with_graph():
    z = torch.randn(3, 4, requires_grad=True)
    out = losses.scpl(z, torch.tensor([0, 1, 2]), 3)
    out.backward()
    assert out.item() == 0.0
