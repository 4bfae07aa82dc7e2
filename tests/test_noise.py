"""Label noise: exact rates, never a self-flip, uniform flips, reproducible across runs, orders and workers."""

import json

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

import datasets
from datasets.noise import (
    apply_region_relabels,
    check_noise_rate,
    corrupt_labels,
    corrupt_masks,
    find_regions,
    plan_region_noise,
    save_audit,
)

torch.set_num_threads(1)


def _labels(n: int, c: int, seed: int = 123) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, c, size=n))


@pytest.mark.parametrize("kind", ["symmetric", "pair"])
@pytest.mark.parametrize(
    ("n", "c", "rate"), [(1000, 10, 0.2), (997, 10, 0.45), (50, 3, 0.3), (7, 2, 0.25), (0, 5, 0.4)]
)
def test_exact_rate_and_no_self_flip(kind, n, c, rate):
    y = _labels(n, c)
    noisy, flipped = corrupt_labels(y, c, rate, kind=kind, seed=1)
    assert noisy.dtype == torch.long and flipped.dtype == torch.bool and noisy.shape == flipped.shape == (n,)
    assert int(flipped.sum()) == round(rate * n)
    assert abs(int(flipped.sum()) - rate * n) <= 1
    assert torch.equal(noisy != y, flipped)  # every flip changes the label, nothing else changes
    if kind == "pair":
        assert torch.equal(noisy[flipped], (y[flipped] + 1) % c)


def test_symmetric_flips_are_uniform_over_other_classes():
    c = 10
    y = _labels(30000, c)
    noisy, flipped = corrupt_labels(y, c, 0.4, seed=5)
    # pooled offsets (new - old) mod C must be uniform over 1..C-1
    offsets = ((noisy[flipped] - y[flipped]) % c).numpy()
    assert offsets.min() >= 1
    assert chisquare(np.bincount(offsets, minlength=c)[1:]).pvalue > 1e-3
    # and per true class: the new label is uniform over the other classes
    for k in range(c):
        counts = np.bincount(noisy[flipped & (y == k)].numpy(), minlength=c)
        assert counts[k] == 0
        assert chisquare(np.delete(counts, k)).pvalue > 1e-4
    # which samples flip does not depend on the class: flip rate per class near the global rate
    per_class = np.array([flipped[y == k].float().mean().item() for k in range(c)])
    assert np.abs(per_class - 0.4).max() < 0.05


def test_reproducible_and_seed_dependent():
    y = _labels(500, 10)
    a = corrupt_labels(y, 10, 0.3, seed=7)
    b = corrupt_labels(y.clone(), 10, 0.3, seed=7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = corrupt_labels(y, 10, 0.3, seed=8)
    assert not torch.equal(a[1], c[1])


def test_golden_values_across_runs_and_versions():
    # pins the PCG64 streams: a change here silently changes every published noisy-label result
    noisy, flipped = corrupt_labels(list(range(10)) * 2, 10, 0.25, seed=0)
    assert flipped.nonzero().flatten().tolist() == GOLDEN_FLIPPED
    assert noisy.tolist() == GOLDEN_NOISY


GOLDEN_FLIPPED = [2, 3, 11, 13, 15]
GOLDEN_NOISY = [0, 1, 1, 9, 4, 5, 6, 7, 8, 9, 0, 4, 2, 1, 4, 6, 6, 7, 8, 9]


def test_independent_of_label_values_and_order():
    n, c = 400, 10
    y1, y2 = _labels(n, c, seed=1), _labels(n, c, seed=2)
    n1, f1 = corrupt_labels(y1, c, 0.3, seed=3)
    n2, f2 = corrupt_labels(y2, c, 0.3, seed=3)
    assert torch.equal(f1, f2)  # positions flipped depend only on (seed, N)
    same = f1 & (y1 == y2)
    assert same.any() and torch.equal(n1[same], n2[same])  # new label depends only on (seed, i, y_i)
    # permuting the labels permutes nothing about which positions flip
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    assert torch.equal(corrupt_labels(y1[perm], c, 0.3, seed=3)[1], f1)


def test_input_kinds_give_the_same_tensors_and_input_is_untouched():
    y = _labels(100, 5)
    keep = y.clone()
    outs = [corrupt_labels(v, 5, 0.2, seed=2) for v in (y, y.numpy(), y.tolist())]
    for noisy, flipped in outs[1:]:
        assert torch.equal(noisy, outs[0][0]) and torch.equal(flipped, outs[0][1])
    assert torch.equal(y, keep)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rate": -0.1}, r"\[0, 1\)"),
        ({"rate": 1.0}, r"\[0, 1\)"),
        ({"rate": float("nan")}, r"\[0, 1\)"),
        ({"rate": 0.9}, "leaves no clean class"),  # symmetric, C=10: needs rate < 0.9
        ({"rate": 0.5, "kind": "pair"}, "leaves no clean class"),
        ({"rate": 0.1, "kind": "asymmetric"}, "unknown noise kind"),
        ({"rate": 0.1, "num_classes": 1}, "at least 2 classes"),
        ({"rate": 0.1, "seed": -1}, "non-negative"),
    ],
)
def test_invalid_arguments(kwargs, match):
    args = {"labels": [0, 1, 2], "num_classes": 10, **kwargs}
    if args["num_classes"] == 1:
        args["labels"] = [0, 0]
    with pytest.raises(ValueError, match=match):
        corrupt_labels(**args)


def test_rate_rule_boundaries():
    check_noise_rate(0.0, 2)
    check_noise_rate(0.49, 2)
    check_noise_rate(0.89, 10)
    check_noise_rate(0.49, 10, "pair")
    with pytest.raises(ValueError):
        check_noise_rate(0.5, 2)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        corrupt_labels([0, 3], 3, 0.1)


# ------------------------------------------------------------------------------------------ segmentation


def _toy_masks() -> torch.Tensor:
    m = torch.zeros(3, 12, 12, dtype=torch.long)
    m[0, 1:4, 1:4] = 1
    m[0, 6:9, 6:9] = 1  # a second region of the same class
    m[0, 1:3, 8:11] = 2
    m[0, 0, :] = 255  # void stays void
    m[1, 2:10, 2:5] = 3
    m[1, 2:10, 5:8] = 2  # touching a different class: two regions
    m[2, 4:6, 4:6] = 1
    return m


def test_find_regions_counts_components_per_class():
    region_map, classes = find_regions(_toy_masks()[0])
    assert classes == [1, 1, 2]
    assert region_map.max() == 3 and (region_map[_toy_masks()[0].numpy() == 0] == 0).all()


@pytest.mark.parametrize("kind", ["symmetric", "pair"])
def test_corrupt_masks_relabels_whole_regions_exactly(kind):
    masks = _toy_masks()
    noisy, plan = corrupt_masks(masks, 4, 0.45, seed=3, kind=kind)
    assert len(plan) == round(0.45 * 6)
    assert noisy.shape == masks.shape and noisy.dtype == torch.long
    changed = noisy != masks
    assert not changed[(masks == 0) | (masks == 255)].any()  # background and void untouched
    for i, r, old, new in plan:
        region = torch.from_numpy(find_regions(masks[i])[0] == r)
        assert old != new and new != 0
        assert (masks[i][region] == old).all() and (noisy[i][region] == new).all()
        if kind == "pair":
            assert new == old % 3 + 1  # next object class, wrapping past background
    # nothing outside planned regions changed
    assert int(changed.sum()) == sum(int((find_regions(masks[i])[0] == r).sum()) for i, r, _, _ in plan)
    again, plan2 = corrupt_masks([m.numpy() for m in masks], 4, 0.45, seed=3, kind=kind)
    assert plan2 == plan and all(torch.equal(a, b) for a, b in zip(again, noisy))


def test_region_plan_replays_on_single_masks():
    masks = _toy_masks()
    noisy, plan = corrupt_masks(masks, 4, 0.6, seed=0)
    for i in range(len(masks)):
        relabels = [(r, old, new) for j, r, old, new in plan if j == i]
        assert torch.equal(apply_region_relabels(masks[i], relabels), noisy[i])


def test_segmentation_noise_needs_two_object_classes():
    with pytest.raises(ValueError, match="2 object"):
        plan_region_noise([[1]], 2, 0.1)
    with pytest.raises(ValueError, match="leaves no clean class"):
        corrupt_masks(_toy_masks(), 4, 0.7)  # 3 object classes: symmetric needs rate < 2/3


# ----------------------------------------------------------------------------------- datasets and audit


def test_dataset_noise_audit_is_saved_and_matches(tmp_path):
    ds = datasets.create_dataset("digits", "train", noise_rate=0.2, noise_seed=4)
    audit = ds.noise_audit
    assert audit["kind"] == "symmetric" and audit["rate"] == 0.2 and audit["seed"] == 4
    assert audit["num_flipped"] == round(0.2 * len(ds)) == len(audit["flipped_indices"])
    diff = torch.nonzero(ds.targets != ds.clean_targets).flatten().tolist()
    assert diff == audit["flipped_indices"]
    # per true class and per transition: they account for every flip
    per_class = audit["flips_per_class"]
    assert len(per_class) == 10 and sum(per_class) == audit["num_flipped"]
    for c in range(10):
        assert per_class[c] == int((ds.clean_targets[torch.tensor(diff, dtype=torch.long)] == c).sum())
    assert sum(n for _, _, n in audit["transitions"]) == audit["num_flipped"]
    assert all(a != b for a, b, _ in audit["transitions"])
    save_audit(audit, tmp_path / "noise.json")
    assert json.loads((tmp_path / "noise.json").read_text()) == audit
    assert datasets.create_dataset("digits", "train").noise_audit is None


def test_noise_only_on_train_split_and_validated_early():
    with pytest.raises(ValueError, match="train split"):
        datasets.create_dataset("digits", "val", noise_rate=0.2)
    with pytest.raises(ValueError, match="unknown noise kind"):
        datasets.create_dataset("digits", "train", noise_rate=0.2, noise_kind="open")
    with pytest.raises(ValueError, match="2 object"):
        datasets.create_dataset("oxford-pet", "train", root="/nonexistent", noise_rate=0.1)


def test_shapes_noise_on_dataset():
    ds = datasets.create_dataset("shapes", "train", size=20, image_size=32, noise_rate=0.3, noise_seed=1)
    audit = ds.noise_audit
    assert audit["num_flipped"] == round(0.3 * audit["num_regions"]) == len(audit["relabelled"])
    changed = {i for i in range(len(ds)) if not torch.equal(ds.masks[i], ds.clean_masks[i])}
    assert changed == set(audit["flipped_indices"])
    assert audit["flips_per_class"][0] == 0 and sum(audit["flips_per_class"]) == audit["num_flipped"]
    assert sorted((a, b) for a, b, _ in audit["transitions"]) == sorted({(p[2], p[3]) for p in audit["relabelled"]})
    assert datasets.create_dataset("shapes", "val", size=4, image_size=32).noise_audit is None


def test_noisy_labels_identical_across_worker_counts_and_shuffles():
    ds = datasets.create_dataset("digits", "train", noise_rate=0.3, noise_seed=9)

    def collect(workers: int, shuffle: bool) -> dict[int, int]:
        # wrap with indices so shuffled batches can be matched back to samples
        idx_ds = _Indexed(ds)
        out = {}
        for idx, (_, y) in datasets.create_loader(idx_ds, 256, shuffle=shuffle, seed=1, num_workers=workers):
            out.update(zip(idx.tolist(), y.tolist()))
        return out

    reference = dict(enumerate(ds.targets.tolist()))
    assert collect(0, False) == reference
    assert collect(2, True) == reference
    ds2 = datasets.create_dataset("digits", "train", noise_rate=0.3, noise_seed=9)
    assert torch.equal(ds2.targets, ds.targets)


# ------------------------------------------------------------------ validation labels (noisy-val protocol)


@pytest.mark.parametrize("kind", ["symmetric", "pair"])
def test_val_draw_is_exact_and_separate_from_the_training_draw(kind):
    y = _labels(1000, 10)
    train_noisy, train_flipped = corrupt_labels(y, 10, 0.3, kind, seed=5)
    val_noisy, val_flipped = corrupt_labels(y, 10, 0.3, kind, seed=5, draw="val")
    assert int(val_flipped.sum()) == 300 and torch.equal(val_noisy != y, val_flipped)  # exact, never a self-flip
    overlap = int((train_flipped & val_flipped).sum())
    assert not torch.equal(train_flipped, val_flipped) and 50 < overlap < 130  # independent draws: ~0.3·300 shared
    assert torch.equal(corrupt_labels(y, 10, 0.3, kind, seed=5, draw="val")[0], val_noisy)  # reproducible
    assert not torch.equal(corrupt_labels(y, 10, 0.3, kind, seed=6, draw="val")[1], val_flipped)
    # the training draw is the one every published result used (see the golden test)
    assert torch.equal(corrupt_labels(y, 10, 0.3, kind, seed=5, draw="train")[1], train_flipped)
    with pytest.raises(ValueError, match="unknown noise draw"):
        corrupt_labels(y, 10, 0.3, kind, seed=5, draw="test")


def test_val_split_noise_is_exact_and_audited_like_training(tmp_path):
    train = datasets.create_dataset("digits", "train", noise_rate=0.4, noise_seed=3)
    val = datasets.add_label_noise(datasets.create_dataset("digits", "val"), 0.4, "symmetric", seed=3)
    audit, taudit = val.noise_audit, train.noise_audit
    assert (audit["split"], audit["draw"], taudit["draw"]) == ("val", "val", "train")
    assert set(audit) == set(taudit)  # the same fields: the audit CSV takes either
    assert audit["num_samples"] == len(val) == 360 and audit["num_flipped"] == round(0.4 * 360)
    diff = torch.nonzero(val.targets != val.clean_targets).flatten().tolist()
    assert diff == audit["flipped_indices"]
    assert sum(audit["flips_per_class"]) == audit["num_flipped"] == sum(n for *_, n in audit["transitions"])
    same_draw_as_train = corrupt_labels(val.clean_targets, 10, 0.4, seed=3)[1]
    assert torch.nonzero(same_draw_as_train).flatten().tolist() != diff
    save_audit(audit, tmp_path / "val_noise.json")
    assert json.loads((tmp_path / "val_noise.json").read_text()) == audit


def test_test_split_is_never_corrupted():
    clean = datasets.create_dataset("digits", "test").targets
    test = datasets.create_dataset("digits", "test")
    with pytest.raises(datasets.DatasetError, match="test split stays clean"):
        datasets.add_label_noise(test, 0.4, seed=1)
    with pytest.raises(datasets.DatasetError, match="test split stays clean"):
        datasets.create_dataset("digits", "test", noise_rate=0.4)
    datasets.create_dataset("digits", "train", noise_rate=0.4, noise_seed=1)
    datasets.add_label_noise(datasets.create_dataset("digits", "val"), 0.4, seed=1)
    assert torch.equal(test.targets, clean) and test.noise_audit is None
    assert torch.equal(datasets.create_dataset("digits", "test").targets, clean)


def test_val_noise_refuses_bad_input():
    val = datasets.create_dataset("digits", "val")
    with pytest.raises(datasets.DatasetError, match="leaves no clean class"):
        datasets.add_label_noise(val, 0.95)
    with pytest.raises(datasets.DatasetError, match="unknown noise kind"):
        datasets.add_label_noise(val, 0.2, "open")
    assert val.noise_audit is None and torch.equal(val.targets, val.clean_targets)
    datasets.add_label_noise(val, 0.2, "pair", seed=0)
    with pytest.raises(datasets.DatasetError, match="already has label noise"):  # never two draws on one split
        datasets.add_label_noise(val, 0.2, seed=1)


def test_val_region_noise_on_shapes():
    val = datasets.create_dataset("shapes", "val", size=20, image_size=32)
    datasets.add_label_noise(val, 0.3, seed=1)
    audit = val.noise_audit
    assert audit["draw"] == "val" and audit["num_flipped"] == round(0.3 * audit["num_regions"])
    changed = {i for i in range(len(val)) if not torch.equal(val.masks[i], val.clean_masks[i])}
    assert changed == set(audit["flipped_indices"])
    assert all(torch.equal(val.masks[i] == 0, val.clean_masks[i] == 0) for i in range(len(val)))  # background kept
    train_plan = corrupt_masks(val.clean_masks, 4, 0.3, seed=1)[1]
    assert len(train_plan) == audit["num_flipped"] and [list(p) for p in train_plan] != audit["relabelled"]


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return i, self.ds[i]
