"""Dataset factory, embedded sets, real loaders on small fake copies, clear errors, and the HF name clash."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import datasets
from datasets import DatasetError, DatasetInfo
from datasets.embedded import digits_split_indices, generate_shapes
from datasets.transforms import build_seg_transform

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
ALL = ("cifar10", "cifar100", "digits", "oxford-pet", "shapes", "tiny-imagenet", "voc")


# --------------------------------------------------------------------------------------------- factory


def test_registry_and_info():
    assert set(ALL) <= set(datasets.list_datasets())
    assert datasets.list_datasets(task="seg") == ["oxford-pet", "shapes", "voc"]
    assert datasets.list_datasets(embedded=True) == ["digits", "shapes"]
    assert datasets.list_datasets("cifar*") == ["cifar10", "cifar100"]
    for name in ALL:
        info = datasets.get_dataset_info(name)
        assert isinstance(info, DatasetInfo) and info.name == name and info.in_chans == 3
        assert len(info.mean) == len(info.std) == 3
        assert info.ignore_index == (255 if info.task == "seg" else -100)
        assert info.class_names is None or len(info.class_names) == info.num_classes
    assert datasets.get_dataset_info("CIFAR_10").name == "cifar10"
    assert datasets.get_dataset_info("tiny_imagenet").num_classes == 200


def test_unknown_name_and_bad_split():
    with pytest.raises(DatasetError, match="Did you mean cifar10.*Available: cifar10, cifar100, digits"):
        datasets.create_dataset("cifr10", "train")
    with pytest.raises(ValueError, match="split must be one of"):
        datasets.create_dataset("digits", "validation")
    with pytest.raises(DatasetError, match="does not accept"):
        datasets.create_dataset("digits", "train", size=3)


# --------------------------------------------------------------------------------------------- digits


def test_digits_splits_disjoint_stable_stratified():
    idx = {s: digits_split_indices(s) for s in ("train", "val", "test")}
    assert [len(v) for v in idx.values()] == [1078, 360, 359]
    allidx = np.concatenate(list(idx.values()))
    assert len(np.unique(allidx)) == 1797 == len(allidx)  # disjoint and covering
    assert np.array_equal(digits_split_indices("val"), idx["val"])
    assert idx["test"][:5].tolist() == [1, 6, 7, 8, 17]  # pinned: a moved test set invalidates old results
    from sklearn.datasets import load_digits

    y = load_digits().target
    for part in idx.values():  # stratified: every class within one sample of its share
        expected = np.bincount(y) * len(part) / len(y)
        assert np.abs(np.bincount(y[part], minlength=10) - expected).max() <= 1.5


def test_digits_items_and_normalisation():
    ds = datasets.create_dataset("digits", "train")
    assert len(ds) == 1078 and ds.info.task == "cls" and ds.embedded
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    batch = torch.stack([ds[i][0] for i in range(0, len(ds), 5)])
    assert abs(batch.mean().item()) < 0.1 and abs(batch.std().item() - 1) < 0.1
    small = datasets.create_dataset("digits", "test", image_size=16)
    assert small[0][0].shape == (3, 16, 16) and small.info.image_size == 16
    aug = datasets.create_dataset("digits", "train", train_aug=True)
    assert aug[0][0].shape == (3, 32, 32) and not torch.equal(aug[0][0], x)


# --------------------------------------------------------------------------------------------- shapes


def test_shapes_deterministic_and_configurable():
    a = generate_shapes("train", 6, 32, 0)
    b = generate_shapes.__wrapped__("train", 6, 32, 0)  # bypass the cache: really regenerate
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = generate_shapes.__wrapped__("train", 6, 32, 1)
    assert not torch.equal(a[1], c[1])
    longer = generate_shapes.__wrapped__("train", 8, 32, 0)
    assert torch.equal(longer[0][:6], a[0])  # image i depends on (seed, split, i) only
    val = generate_shapes.__wrapped__("val", 6, 32, 0)
    assert not any(torch.equal(v, t) for v in val[0] for t in a[0])
    ds = datasets.create_dataset("shapes", "val", size=5, image_size=48)
    x, m = ds[0]
    assert len(ds) == 5 and x.shape == (3, 48, 48) and m.shape == (48, 48) and m.dtype == torch.long
    assert datasets.create_dataset("shapes", "train").images.shape == (600, 3, 64, 64)


def test_shapes_masks_consistent_with_images():
    images, masks = generate_shapes.__wrapped__("test", 40, 64, 0, 0.0)  # no pixel noise: edges are exact
    assert set(masks.unique().tolist()) == {0, 1, 2, 3}
    # a mask boundary is a colour edge: image gradients there are far larger than inside regions
    gx = (images[..., 1:] - images[..., :-1]).abs().sum(1)
    on_edge = masks[..., 1:] != masks[..., :-1]
    assert gx[on_edge].mean() > 4 * gx[~on_edge].mean()
    shifted = torch.roll(masks, 3, dims=-1)
    assert (masks != shifted).any()  # sanity: a misaligned mask would not pass the edge test
    gx_bad = gx[(shifted[..., 1:] != shifted[..., :-1])].mean()
    assert gx[on_edge].mean() > 2 * gx_bad


def test_shapes_not_trivial():
    _, masks = generate_shapes("train", None, 64, 0)
    frac = torch.bincount(masks.flatten().long(), minlength=4).float() / masks.numel()
    assert 0.6 < frac[0] < 0.8 and (frac[1:] > 0.05).all()  # majority-class pixel accuracy stays below 80%
    # colour does not give the class away: a pixel-colour classifier is no better than the majority guess
    from sklearn.linear_model import LogisticRegression

    images, _ = generate_shapes("train", None, 64, 0)
    rng = np.random.default_rng(0)
    pix = images.permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    lab = masks.flatten().numpy()
    fg = np.flatnonzero(lab > 0)
    tr, te = rng.choice(fg, 3000, replace=False), rng.choice(fg, 2000, replace=False)
    clf = LogisticRegression(max_iter=200).fit(pix[tr], lab[tr])
    majority = np.bincount(lab[tr]).max() / len(tr)
    assert clf.score(pix[te], lab[te]) < majority + 0.05


def test_joint_seg_transform_keeps_mask_aligned():
    info = datasets.get_dataset_info("shapes")
    info = DatasetInfo(**{**info.__dict__, "mean": (0.0,) * 3, "std": (1.0,) * 3, "image_size": 32})
    _, masks = generate_shapes("train", 4, 64, 0)
    t = build_seg_transform(info, train=True, flips="hv")
    torch.manual_seed(0)
    for m in masks:
        img = m.float().expand(3, -1, -1) / 3  # the image encodes the mask: geometry must match after transform
        xi, mi = t(img, m)
        assert xi.shape == (3, 32, 32) and mi.shape == (32, 32)
        agree = (torch.round(xi[0] * 3).long() == mi).float().mean()  # bilinear image vs nearest mask: edges differ
        assert agree > 0.85  # a mask flipped against its image agrees on 0.3-0.7 of the pixels here


# ------------------------------------------------------------------------------------------ loaders


def test_create_loader_seeded_and_defaults():
    ds = datasets.create_dataset("shapes", "val", size=12, image_size=32)
    a = [m for _, m in datasets.create_loader(ds, 4, shuffle=True, seed=3)]
    b = [m for _, m in datasets.create_loader(ds, 4, shuffle=True, seed=3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and a[0].shape == (4, 32, 32)
    assert datasets.create_loader(ds, 4).num_workers == 0
    other = torch.utils.data.TensorDataset(torch.zeros(4))
    assert datasets.create_loader(other, 2).num_workers == min(4, os.cpu_count() or 1)


# -------------------------------------------------------------------------------- real data, fake files


def _write_cifar(root: Path, name: str, per_file: int = 20) -> None:
    folder, train, test, meta, key, names, classes = {
        "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                    "batches.meta", "labels", "label_names", 10),
        "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels", "fine_label_names", 100),
    }[name]  # fmt: skip
    base = root / folder
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k, f in enumerate(train + test):
        n = per_file if name == "cifar10" else 200
        labels = [(k * n + i) % classes for i in range(n)]
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        data[:, 0] = labels  # first red pixel carries the label: lets the test check image/label pairing
        with open(base / f, "wb") as fh:
            pickle.dump({"data": data, key: labels}, fh)
    with open(base / meta, "wb") as fh:
        pickle.dump({names: [f"class{i}" for i in range(classes)]}, fh)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reads_fake_copy(tmp_path, name):
    _write_cifar(tmp_path, name)
    n_train = 100 if name == "cifar10" else 200
    parts = {s: datasets.create_dataset(name, s, root=tmp_path, train_aug=s == "train") for s in ("train", "val")}
    test = datasets.create_dataset(name, "test", root=tmp_path)
    assert len(parts["train"]) + len(parts["val"]) == n_train and len(parts["val"]) == n_train // 10
    assert len(test) == (20 if name == "cifar10" else 200)
    assert parts["train"].info.class_names[3] == ("cat" if name == "cifar10" else "class3")
    for ds in (*parts.values(), test):
        assert torch.equal(ds.images[:, 0, 0, 0].long(), ds.targets)  # labels stay with their images
        x, y = ds[0]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    train_imgs = {bytes(x.numpy()) for x in parts["train"].images}
    assert not any(bytes(x.numpy()) in train_imgs for x in parts["val"].images)  # disjoint
    noisy = datasets.create_dataset(name, "train", root=tmp_path, noise_rate=0.2)
    assert noisy.noise_audit["num_flipped"] == round(0.2 * len(noisy))


def _jpeg(path: Path, size=(64, 64), value=0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size[::-1], 3), value, dtype=np.uint8)).save(path)


def _write_tiny(root: Path, wnids=("n01", "n02", "n03"), per_class=10) -> Path:
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")  # file order is not label order
    (base / "words.txt").write_text("".join(f"{w}\tthing {w}\n" for w in wnids))
    for k, w in enumerate(wnids):
        for i in range(per_class):
            _jpeg(base / "train" / w / "images" / f"{w}_{i}.JPEG", value=40 * k)
    lines = []
    for i in range(6):
        _jpeg(base / "val" / "images" / f"val_{i}.JPEG", value=40 * (i % 3))
        lines.append(f"val_{i}.JPEG\t{wnids[i % 3]}\t0\t0\t10\t10")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return base


def test_tiny_imagenet_reads_fake_copy(tmp_path):
    _write_tiny(tmp_path)
    train = datasets.create_dataset("tiny-imagenet", "train", root=tmp_path, train_aug=True)
    val = datasets.create_dataset("tiny-imagenet", "val", root=tmp_path)
    test = datasets.create_dataset("tiny-imagenet", "test", root=tmp_path, image_size=32)
    assert (len(train), len(val), len(test)) == (27, 3, 6)
    assert not set(train.paths) & set(val.paths)
    assert sorted(val.targets.tolist()) == [0, 1, 2] and val.info.class_names == ("thing n01", "thing n02", "thing n03")
    x, y = test[4]
    assert x.shape == (3, 32, 32) and y == 1
    # images carry their class in their grey level: check the label/file pairing survives
    mean, std = torch.tensor(test.info.mean), torch.tensor(test.info.std)
    grey = (x[:, 16, 16] * std + mean).mean().item() * 255
    assert abs(grey - 40) < 3


def _write_voc(root: Path, n_train=10, n_val=4) -> Path:
    base = root / "VOCdevkit" / "VOC2012"
    seg = base / "ImageSets" / "Segmentation"
    seg.mkdir(parents=True)
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (3 * 253)
    ids = {"train": [f"2007_{i:06d}" for i in range(n_train)], "val": [f"2008_{i:06d}" for i in range(n_val)]}
    for split, names in ids.items():
        (seg / f"{split}.txt").write_text("\n".join(names) + "\n")
        for k, name in enumerate(names):
            _jpeg(base / "JPEGImages" / f"{name}.jpg", size=(40, 30), value=10 * k)
            m = np.zeros((30, 40), dtype=np.uint8)
            m[5:15, 5:15] = 1 + k % 20
            m[18:26, 20:35] = 15
            m[4, 4:16] = 255  # void border
            png = Image.fromarray(m, mode="P")
            png.putpalette(palette)
            (base / "SegmentationClass").mkdir(exist_ok=True)
            png.save(base / "SegmentationClass" / f"{name}.png")
    return base


def test_voc_reads_fake_copy_with_noise(tmp_path):
    _write_voc(tmp_path)
    train = datasets.create_dataset("voc", "train", root=tmp_path, image_size=32, train_aug=True)
    val = datasets.create_dataset("voc", "val", root=tmp_path, image_size=32)
    test = datasets.create_dataset("voc", "test", root=tmp_path, image_size=32)
    assert (len(train), len(val), len(test)) == (9, 1, 4)
    x, m = test[2]
    assert x.shape == (3, 32, 32) and m.shape == (32, 32) and m.dtype == torch.long
    assert set(m.unique().tolist()) <= {0, 3, 15, 255} and 3 in m.unique().tolist() and 255 in m.unique()
    noisy = datasets.create_dataset("voc", "train", root=tmp_path, image_size=32, noise_rate=0.5, noise_seed=2)
    audit = noisy.noise_audit
    assert audit["num_regions"] == 18 and audit["num_flipped"] == 9 == len(audit["relabelled"])
    i, _, old, new = audit["relabelled"][0]
    clean = datasets.create_dataset("voc", "train", root=tmp_path, image_size=32)  # no aug: comparable
    noisy_m, clean_m = noisy[i][1], clean[i][1]
    assert ((clean_m == old) & (noisy_m == new)).any() and torch.equal(clean_m == 0, noisy_m == 0)


def test_voc_val_region_noise_is_replayed_from_its_plan(tmp_path):
    _write_voc(tmp_path, n_train=20)
    val = datasets.create_dataset("voc", "val", root=tmp_path, image_size=32)
    clean = [val[i][1] for i in range(len(val))]
    datasets.add_label_noise(val, 0.5, seed=2)
    audit = val.noise_audit
    assert (audit["split"], audit["draw"], audit["num_regions"], audit["num_flipped"]) == ("val", "val", 4, 2)
    assert sorted(val.relabel_plan) == audit["flipped_indices"]
    for i in range(len(val)):
        noisy = val[i][1]
        assert torch.equal(noisy == 0, clean[i] == 0) and torch.equal(noisy == 255, clean[i] == 255)
        assert torch.equal(noisy, clean[i]) == (i not in val.relabel_plan)


def _write_pet(root: Path) -> Path:
    base = root / "oxford-iiit-pet"
    (base / "annotations" / "trimaps").mkdir(parents=True)
    splits = {"trainval": [f"Abyssinian_{i}" for i in range(10)], "test": ["beagle_1", "beagle_2"]}
    for split, ids in splits.items():
        (base / "annotations" / f"{split}.txt").write_text("".join(f"{i} 1 1 1\n" for i in ids))
        for name in ids:
            _jpeg(base / "images" / f"{name}.jpg", size=(48, 40))
            tri = np.full((40, 48), 2, dtype=np.uint8)
            tri[10:30, 10:30] = 3
            tri[12:28, 12:28] = 1
            Image.fromarray(tri).save(base / "annotations" / "trimaps" / f"{name}.png")
    return base


def test_oxford_pet_reads_fake_copy(tmp_path):
    _write_pet(tmp_path)
    train = datasets.create_dataset("oxford-pet", "train", root=tmp_path, image_size=40)
    val = datasets.create_dataset("oxford-pet", "val", root=tmp_path, image_size=40)
    test = datasets.create_dataset("oxford-pet", "test", root=tmp_path, image_size=40)
    assert (len(train), len(val), len(test)) == (9, 1, 2)
    _, m = test[0]
    assert m.shape == (40, 40) and set(m.unique().tolist()) == {0, 1, 255}
    assert torch.equal(pickle.loads(pickle.dumps(test))[0][1], m)  # picklable: works with spawned workers
    raw = test.load_mask(0)
    assert raw[0, 0] == 0 and raw[20, 20] == 1 and raw[11, 11] == 255  # trimap 2 -> bg, 1 -> pet, 3 -> ignore


# ------------------------------------------------------------------------------------------ clear errors


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
        ("tiny-imagenet", "tiny-imagenet-200"),
        ("oxford-pet", "oxford-iiit-pet"),
        ("voc", os.path.join("VOCdevkit", "VOC2012")),
    ],
)
def test_missing_root_gives_one_clear_error(tmp_path, name, path):
    with pytest.raises(DatasetError) as err:
        datasets.create_dataset(name, "train", root=tmp_path / "empty")
    msg = str(err.value)
    assert str(tmp_path / "empty" / path) in msg and "--download" in msg and "expected:" in msg


def test_incomplete_copies_name_the_missing_files(tmp_path):
    _write_cifar(tmp_path, "cifar10")
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(DatasetError, match="missing: data_batch_3"):
        datasets.create_dataset("cifar10", "test", root=tmp_path)
    base = _write_voc(tmp_path)
    os.remove(base / "SegmentationClass" / "2008_000001.png")
    with pytest.raises(DatasetError, match="2008_000001.png"):
        datasets.create_dataset("voc", "test", root=tmp_path)
    base = _write_tiny(tmp_path)
    for f in (base / "train" / "n02" / "images").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match="n02"):
        datasets.create_dataset("tiny-imagenet", "train", root=tmp_path)
    (tmp_path / "cifar-100-python").mkdir()
    for f in ("train", "test", "meta"):
        (tmp_path / "cifar-100-python" / f).write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="not a readable CIFAR batch"):
        datasets.create_dataset("cifar100", "test", root=tmp_path)


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DatasetError, match="downloading cifar10 failed: OSError: Temporary failure"):
        datasets.create_dataset("cifar10", "train", root=tmp_path, download=True)


def test_default_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DEINFOREG_DATA_ROOT", str(tmp_path / "fromenv"))
    with pytest.raises(DatasetError, match="fromenv"):
        datasets.create_dataset("cifar10", "test")


# ------------------------------------------------------------------------------------ Hugging Face clash


def test_our_datasets_wins_over_an_installed_hf_datasets(tmp_path):
    fake = tmp_path / "site" / "datasets"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("HF = True\ndef load_dataset(*a, **k): pass\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}  # like site-packages: after the working directory
    code = "import datasets, sys; print(datasets.__file__); print(callable(datasets.create_dataset))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    path, ok = out.stdout.split()
    assert Path(path).resolve() == REPO / "datasets" / "__init__.py" and ok == "True"


@pytest.mark.parametrize("rate", [0.2, 0.4])
def test_noise_is_drawn_over_exactly_the_images_kept(rate):
    """`limit` subsets before label noise: round(rate·limit) of the kept labels flip, the same subset every seed."""
    a = datasets.create_dataset("digits", "train", image_size=8, limit=384, noise_rate=rate, noise_seed=1)
    b = datasets.create_dataset("digits", "train", image_size=8, limit=384, noise_rate=rate, noise_seed=2)
    assert len(a) == len(b) == 384
    assert a.noise_audit["num_samples"] == 384 and a.noise_audit["num_flipped"] == round(rate * 384)
    assert int((a.targets != a.clean_targets).sum()) == round(rate * 384)
    assert torch.equal(a.clean_targets, b.clean_targets)  # the same images, whatever the noise seed
    shapes = datasets.create_dataset("shapes", "train", image_size=16, limit=12)  # procedural: generates only those
    assert len(shapes) == 12
    with pytest.raises(DatasetError, match="limit"):
        datasets.create_dataset("digits", "train", limit=0)
