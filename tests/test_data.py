"""Tests of advlab.data: real file formats written here (IDX, CIFAR-10 pickles, JPEG zips), no mocks."""
from __future__ import annotations

import gzip
import logging
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from advlab.data import (
    ArrayDataModule,
    CIFAR10DataModule,
    CIFAR10JPEGDataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    SyntheticDataModule,
    crop_flip,
    install_shared_mnist,
    make_loader,
    random_crop_flip,
    stratified_split,
)
from advlab.apps.data import main as data_app_main
from advlab.errors import ConfigError

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ------------------------------------------------------------------------------------------------
# writers of real file formats
# ------------------------------------------------------------------------------------------------
def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> None:
    """IDX (LeCun) file: magic 0x00000800 | ndim (2049 labels, 2051 images), big-endian dims, uint8 data."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    magic = 0x0800 | arr.ndim
    assert magic == {1: 2049, 3: 2051}[arr.ndim]
    payload = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def idx_images(n: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """n 28×28 images; pixel (0, 0) = its index (offset + i, unique), a 255 pixel whose place depends on i,
    a constant background of 3·label; label = i mod 10."""
    labels = (np.arange(n) % 10).astype(np.uint8)
    x = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        x[i] = 3 * labels[i]
        x[i, 0, 0] = offset + i
        x[i, 1 + i % 27, 1 + (5 * i) % 27] = 255
    return x, labels


def make_idx_tree(root: Path, folder: str, n_train: int = 50, n_test: int = 30, train: bool = True, gz: bool = False):
    raw = root / folder / "raw"
    xtr, ytr = idx_images(n_train, 0)
    xte, yte = idx_images(n_test, 100)
    if train:
        write_idx(raw / "train-images-idx3-ubyte", xtr, gz)
        write_idx(raw / "train-labels-idx1-ubyte", ytr, gz)
    write_idx(raw / "t10k-images-idx3-ubyte", xte, gz)
    write_idx(raw / "t10k-labels-idx1-ubyte", yte, gz)
    return xtr, ytr, xte, yte


def cifar_rows(n: int, offset: int) -> tuple[np.ndarray, list[int]]:
    """n CIFAR rows (3072 = R plane, G plane, B plane): R all 255 or 0 (even/odd index), G 51,
    B = a gradient; B[0, 0] holds the unique index."""
    rows = np.zeros((n, 3, 32, 32), dtype=np.uint8)
    for i in range(n):
        k = offset + i
        rows[i, 0] = 255 if k % 2 == 0 else 0
        rows[i, 1] = 51
        rows[i, 2] = (np.arange(32)[None, :] * 4 + np.arange(32)[:, None] + k) % 256
        rows[i, 2, 0, 0] = k
    labels = [(offset + i) % 10 for i in range(n)]
    return rows.reshape(n, 3072), labels


def make_cifar_batches(root: Path, per_batch: int = 4, n_test: int = 6) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b in range(5):
        data, labels = cifar_rows(per_batch, b * per_batch)
        entry = {"batch_label": f"training batch {b + 1} of 5", "labels": labels, "data": data,
                 "filenames": [f"img_{b}_{i}.png" for i in range(per_batch)]}
        with open(folder / f"data_batch_{b + 1}", "wb") as f:
            pickle.dump(entry, f, protocol=2)
    data, labels = cifar_rows(n_test, 100)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"batch_label": "testing batch 1 of 1", "labels": labels, "data": data,
                     "filenames": [f"t_{i}.png" for i in range(n_test)]}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072}, f, protocol=2)
    return folder


def jpeg_colour(cls: int, i: int) -> tuple[int, int, int]:
    return (20 * cls + 10, 100 * i + 40, 240 - 20 * cls)


def make_jpeg_zips(zip_dir: Path, per_class: dict[str, int]) -> None:
    """train.zip / test.zip (stored, uncompressed) with <split>/<class>/NNNN.jpg constant-colour 32×32 images."""
    from PIL import Image

    zip_dir.mkdir(parents=True, exist_ok=True)
    for split, n in per_class.items():
        with zipfile.ZipFile(zip_dir / f"{split}.zip", "w", compression=zipfile.ZIP_STORED) as zf:
            for c, name in enumerate(CIFAR_NAMES):
                for i in range(n):
                    img = Image.new("RGB", (32, 32), jpeg_colour(c, i))
                    path = zip_dir / "tmp.jpg"
                    img.save(path, format="JPEG", quality=95)
                    zf.write(path, f"{split}/{name}/{i:04d}.jpg")
                    path.unlink()


def ids_of(x: torch.Tensor) -> list[int]:
    """Recover the unique index written into pixel (0, 0) of the IDX test images."""
    return [int(v) for v in torch.round(x[:, 0, 0, 0] * 255)]


# ------------------------------------------------------------------------------------------------
# digits (scikit-learn): shapes, subset, splits
# ------------------------------------------------------------------------------------------------
def test_digits_shapes_and_split_sizes():
    from sklearn.datasets import load_digits

    dm = DigitsDataModule()
    dm.setup()
    # 1797 images: stratified 20 % test = 360, 10 % of the remaining 1437 = 144 validation
    assert (len(dm.y_train), len(dm.y_val), len(dm.y_test)) == (1293, 144, 360)
    assert dm.input_shape == (1, 8, 8) and dm.num_classes == 10
    assert dm.x_train.dtype == torch.float32 and dm.y_train.dtype == torch.int64
    assert dm.class_names == [str(i) for i in range(10)]
    assert dm.bounds == (0.0, 1.0)
    every = torch.cat([dm.x_train, dm.x_val, dm.x_test])
    assert float(every.max()) == 1.0 and float(every.min()) == 0.0
    assert torch.equal(every * 16, torch.round(every * 16))  # values are k/16
    digits = load_digits()
    # the pixel sum per class over all splits equals that of the raw data: nothing lost or relabelled
    y_all = torch.cat([dm.y_train, dm.y_val, dm.y_test])
    for c in range(10):
        assert float(every[y_all == c].sum() * 16) == pytest.approx(float(digits.images[digits.target == c].sum()))
    # stratified test split: each class gets round(20 %) of its count (±1)
    counts = np.bincount(digits.target)
    test_counts = torch.bincount(dm.y_test, minlength=10).numpy()
    assert np.all(np.abs(test_counts - counts * 0.2) <= 1)
    # mean / std: per channel, from the training split, population std
    assert dm.mean.shape == (1,) and dm.std.shape == (1,)
    assert float(dm.mean) == pytest.approx(float(dm.x_train.mean()), abs=1e-6)
    assert float(dm.std) == pytest.approx(float(dm.x_train.double().std(correction=0)), abs=1e-6)


def test_class_subset_remaps_labels_and_names():
    from sklearn.datasets import load_digits

    digits = load_digits()
    dm = DigitsDataModule(classes=[2, 1], val_fraction=0.2)
    dm.setup()
    assert dm.class_names == ["2", "1"] and dm.num_classes == 2
    y_all = torch.cat([dm.y_train, dm.y_val, dm.y_test])
    x_all = torch.cat([dm.x_train, dm.x_val, dm.x_test])
    assert set(y_all.tolist()) == {0, 1}
    # 177 twos (now label 0) and 182 ones (now label 1) in scikit-learn's digits
    assert int((y_all == 0).sum()) == 177 and int((y_all == 1).sum()) == 182
    assert float(x_all[y_all == 0].sum() * 16) == pytest.approx(float(digits.images[digits.target == 2].sum()))
    assert float(x_all[y_all == 1].sum() * 16) == pytest.approx(float(digits.images[digits.target == 1].sum()))
    assert dm.describe()["classes"] == [2, 1]
    assert DigitsDataModule(augment=True).describe()["augment"] is True


def test_bad_config_values_raise_config_error_naming_the_key():
    with pytest.raises(ConfigError) as e:
        DigitsDataModule(classes=[1, 12]).setup()
    assert e.value.key == "dataset.classes" and "0..9" in str(e.value)
    with pytest.raises(ConfigError, match="^classes: "):
        DigitsDataModule(classes=[1, 1])
    with pytest.raises(ConfigError, match="^val_fraction: "):
        DigitsDataModule(val_fraction=1.0)
    with pytest.raises(ConfigError, match="^max_train: "):
        DigitsDataModule(max_train=0)
    with pytest.raises(ConfigError, match="^batch_size: "):
        DigitsDataModule(batch_size=-3)


# ------------------------------------------------------------------------------------------------
# splits, max_train, loaders (synthetic data: every row unique)
# ------------------------------------------------------------------------------------------------
def _rows(x: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(r) for r in x.tolist()}


def test_seeded_validation_split_is_reproducible_and_disjoint():
    kw = dict(kind="gaussian", dim=4, n_train=500, n_test=100, val_fraction=0.2)
    a, b, c = SyntheticDataModule(seed=3, **kw), SyntheticDataModule(seed=3, **kw), SyntheticDataModule(seed=4, **kw)
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_val, b.x_val) and torch.equal(a.y_val, b.y_val)
    assert not torch.equal(a.x_val, c.x_val)
    assert (len(a.x_train), len(a.x_val), len(a.x_test)) == (400, 100, 100)
    assert not (_rows(a.x_train) & _rows(a.x_val))
    assert not ((_rows(a.x_train) | _rows(a.x_val)) & _rows(a.x_test))
    assert len(_rows(a.x_train) | _rows(a.x_val)) == 500


def test_val_fraction_zero_uses_test_split_and_max_train_keeps_first_examples():
    full = SyntheticDataModule(kind="uniform", dim=3, n_train=300, n_test=50, val_fraction=0.1, seed=1)
    cut = SyntheticDataModule(kind="uniform", dim=3, n_train=300, n_test=50, val_fraction=0.1, seed=1, max_train=40)
    full.setup()
    cut.setup()
    assert len(cut.x_train) == 40 and torch.equal(cut.x_train, full.x_train[:40])
    assert torch.equal(cut.x_val, full.x_val)  # the carve-out does not depend on max_train
    assert cut.mean.item() == pytest.approx(cut.x_train.mean().item(), abs=1e-6)
    zero = SyntheticDataModule(kind="uniform", dim=3, n_train=300, n_test=50, val_fraction=0.0, seed=1)
    zero.setup()
    assert len(zero.x_train) == 300 and zero.x_val is zero.x_test and zero.y_val is zero.y_test


def test_loaders_yield_whole_batches_and_cover_the_split():
    dm = SyntheticDataModule(kind="gaussian", dim=6, n_train=1000, n_test=300, val_fraction=0.1, batch_size=128,
                             eval_batch_size=256)
    loader = dm.train_dataloader()
    assert isinstance(loader, DataLoader) and isinstance(loader.dataset, TensorDataset)
    assert type(loader.batch_sampler) is BatchSampler and isinstance(loader.batch_sampler.sampler, RandomSampler)
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [128] * 7 + [900 - 7 * 128]
    x0, y0 = batches[0]
    assert x0.shape == (128, 6) and x0.dtype == torch.float32 and y0.dtype == torch.int64
    xs = torch.cat([b[0] for b in batches])
    assert _rows(xs) == _rows(dm.x_train)  # one epoch = every training example once
    assert not torch.equal(xs, dm.x_train)  # shuffled
    epoch2 = torch.cat([b[0] for b in loader])
    assert not torch.equal(epoch2, xs)  # a new order each epoch
    again = SyntheticDataModule(kind="gaussian", dim=6, n_train=1000, n_test=300, val_fraction=0.1, batch_size=128)
    assert torch.equal(torch.cat([b[0] for b in again.train_dataloader()]), xs)  # same seed, same order
    test = list(dm.test_dataloader())
    assert isinstance(dm.test_dataloader().batch_sampler.sampler, SequentialSampler)
    assert [len(b[0]) for b in test] == [256, 44]
    assert torch.equal(torch.cat([b[0] for b in test]), dm.x_test) and torch.equal(torch.cat([b[1] for b in test]), dm.y_test)


def test_stratified_split_counts_and_tiny_fallback():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    tr, te = stratified_split(y, 0.2, seed=0)
    assert torch.bincount(y[te]).tolist() == [10, 6, 4] and torch.bincount(y[tr]).tolist() == [40, 24, 16]
    assert sorted(tr.tolist() + te.tolist()) == list(range(100))
    tr2, te2 = stratified_split(y, 0.2, seed=0)
    assert torch.equal(te, te2) and not torch.equal(te, stratified_split(y, 0.2, seed=1)[1])
    tiny = torch.arange(12) % 10  # 12 examples, 10 classes: 3 test examples cannot hold every class
    tr, te = stratified_split(tiny, 0.2, seed=0)
    assert (len(tr), len(te)) == (9, 3) and not set(tr.tolist()) & set(te.tolist())


def test_loaders_survive_lightning_sampler_injection():
    """Lightning rebuilds loaders for DDP (DistributedSampler) and predict (index-tracking wrapper): batches stay whole."""
    import pytorch_lightning as pl
    from pytorch_lightning.utilities.data import _update_dataloader
    from torch.utils.data import DistributedSampler

    dm = SyntheticDataModule(kind="gaussian", dim=3, n_train=1000, n_test=300, val_fraction=0.0, batch_size=100,
                             eval_batch_size=64)
    loader = dm.train_dataloader()
    halves = []
    for rank in range(2):  # what the trainer does on each of 2 DDP ranks
        ddp = _update_dataloader(loader, DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=True))
        batches = list(ddp)
        assert [len(b[0]) for b in batches] == [100] * 5 and batches[0][0].shape == (100, 3)
        halves.append(torch.cat([b[0] for b in batches]))
    assert _rows(torch.cat(halves)) == _rows(dm.x_train)

    class Identity(pl.LightningModule):
        def predict_step(self, batch, batch_idx):
            return batch[0]

    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    out = trainer.predict(Identity(), dataloaders=dm.test_dataloader())
    assert [len(o) for o in out] == [64] * 4 + [44] and torch.equal(torch.cat(out), dm.x_test)


def test_make_loader_on_a_plain_tensor_dataset():
    x = torch.arange(50, dtype=torch.float32).view(25, 2)
    y = torch.arange(25)
    batches = list(make_loader(TensorDataset(x, y), batch_size=10, shuffle=True, seed=5))
    assert [len(b[0]) for b in batches] == [10, 10, 5]
    got_x, got_y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert torch.equal(got_x[:, 0], 2 * got_y.float())  # rows stay paired with their labels
    assert sorted(got_y.tolist()) == list(range(25))
    same = list(make_loader(TensorDataset(x, y), batch_size=10, shuffle=True, seed=5))
    assert torch.equal(torch.cat([b[1] for b in same]), got_y)


# ------------------------------------------------------------------------------------------------
# augmentation
# ------------------------------------------------------------------------------------------------
def test_crop_flip_matches_a_per_sample_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 10, 12, generator=g)
    top = torch.tensor([0, 4, 8, 2, 8, 0])
    left = torch.tensor([0, 4, 8, 7, 0, 8])
    flip = torch.tensor([False, True, False, True, True, False])
    out = crop_flip(x, top, left, flip, padding=4)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(6):
        ref = padded[i, :, top[i]: top[i] + 10, left[i]: left[i] + 12]
        if flip[i]:
            ref = torch.flip(ref, dims=[2])
        assert torch.equal(out[i], ref)
    assert torch.equal(out[1], torch.flip(x[1], dims=[2]))  # centre crop + flip = plain mirror image
    assert torch.equal(out[0][:, 4:, 4:], x[0][:, :6, :8]) and float(out[0][:, :4].abs().sum()) == 0.0


def test_random_crop_flip_outputs_are_crops_or_mirrors_of_their_input():
    x = torch.rand(200, 1, 6, 6, generator=torch.Generator().manual_seed(1)) + 0.5  # no zero pixel in the data
    out = random_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(2))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    seen_flip, seen_offsets = set(), set()
    for i in range(len(x)):
        found = False
        for t in range(5):
            for l in range(5):
                crop = padded[i, :, t: t + 6, l: l + 6]
                for f in (False, True):
                    if torch.equal(out[i], torch.flip(crop, dims=[2]) if f else crop):
                        found = True
                        seen_flip.add(f)
                        seen_offsets.add((t, l))
        assert found
    assert seen_flip == {False, True} and len(seen_offsets) == 25


def test_augment_applies_to_training_batches_only_in_a_real_trainer():
    import pytorch_lightning as pl

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(64, 10)
            self.train_batches, self.val_batches = [], []

        def training_step(self, batch, batch_idx):
            self.train_batches.append([t.clone() for t in batch])
            return torch.nn.functional.cross_entropy(self.layer(batch[0].flatten(1)), batch[1])

        def validation_step(self, batch, batch_idx):
            self.val_batches.append([t.clone() for t in batch])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = DigitsDataModule(augment=True, max_train=16, batch_size=16, eval_batch_size=1000)
    model = Recorder()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    assert len(model.train_batches) == 2 and len(model.val_batches) == 2
    # validation batches are the untouched validation split
    assert torch.equal(model.val_batches[0][0], dm.x_val) and torch.equal(model.val_batches[0][1], dm.y_val)
    padded = torch.nn.functional.pad(dm.x_train, (4, 4, 4, 4))
    candidates = []  # every crop/flip of every training image, with its label
    for t in range(9):
        for l in range(9):
            crop = padded[:, :, t: t + 8, l: l + 8]
            candidates += [(crop, dm.y_train), (torch.flip(crop, dims=[3]), dm.y_train)]
    unchanged = 0
    for x, y in model.train_batches:
        assert x.shape == (16, 1, 8, 8)
        for xi, yi in zip(x, y):
            assert any(bool(((cand == xi).all(dim=(1, 2, 3)) & (labels == yi)).any()) for cand, labels in candidates)
            unchanged += int(any(torch.equal(xi, xt) for xt in dm.x_train))
    assert unchanged < 8  # most training images were actually moved or mirrored


def test_augment_on_vector_data_is_a_config_error():
    with pytest.raises(ConfigError, match="^augment: "):
        SyntheticDataModule(augment=True)


# ------------------------------------------------------------------------------------------------
# with_train
# ------------------------------------------------------------------------------------------------
class CountingDigits(DigitsDataModule):
    loads = 0

    def _load(self):
        type(self).loads += 1
        return super()._load()


def test_with_train_replaces_only_the_training_split():
    dm = CountingDigits(classes=[0, 1, 2], batch_size=32)
    dm.setup()
    assert CountingDigits.loads == 1
    x_adv = (dm.x_train[:100] + 0.05).clamp(0, 1)
    y_target = (dm.y_train[:100] + 1) % 3
    new = dm.with_train(x_adv, y_target, tag="det-eps2")
    assert CountingDigits.loads == 1  # nothing reloaded
    assert torch.equal(new.x_train, x_adv) and torch.equal(new.y_train, y_target)
    assert new.x_val is dm.x_val and new.x_test is dm.x_test and new.y_test is dm.y_test
    assert torch.equal(new.mean, dm.mean) and torch.equal(new.std, dm.std)
    assert new.class_names == ["0", "1", "2"] and new.bounds == dm.bounds and new.input_shape == (1, 8, 8)
    assert new.describe() == {**dm.describe(), "train": "det-eps2"}
    assert isinstance(new, ArrayDataModule) and not torch.equal(dm.x_train[:100], x_adv)
    batches = list(new.train_dataloader())
    assert [len(b[0]) for b in batches] == [32, 32, 32, 4]
    assert torch.equal(torch.cat([b[1] for b in batches]).sort().values, y_target.sort().values)
    # uint8 input is scaled like the loaders' data; wrong shapes are refused
    as_uint8 = dm.with_train(torch.full((4, 1, 8, 8), 255, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
    assert float(as_uint8.x_train.min()) == 1.0
    with pytest.raises(ValueError):
        dm.with_train(torch.zeros(4, 64), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the bounds"):
        dm.with_train(torch.full((4, 1, 8, 8), 1.5), torch.zeros(4, dtype=torch.long))
    smaller = dm.with_train(x_adv, y_target, batch_size=50)
    assert smaller.batch_size == 50 and dm.batch_size == 32


# ------------------------------------------------------------------------------------------------
# synthetic data: the stated distributions
# ------------------------------------------------------------------------------------------------
def test_synthetic_gaussian_teacher_labels():
    dm = SyntheticDataModule(kind="gaussian", dim=5, n_train=6000, n_test=2000, num_classes=3, val_fraction=0.0)
    dm.setup()
    x = torch.cat([dm.x_train, dm.x_test])
    y = torch.cat([dm.y_train, dm.y_test])
    assert dm.input_shape == (5,) and dm.bounds is None and dm.num_classes == 3
    assert x.mean(dim=0).abs().max() < 0.06 and (x.var(dim=0) - 1).abs().max() < 0.08
    assert torch.equal(y, (x @ dm.teacher.T).argmax(dim=1))
    share = torch.bincount(y, minlength=3).float() / len(y)
    assert share.min() > 0.1
    assert dm.mean.shape == (1,) and dm.std.shape == (1,)
    assert abs(dm.mean.item()) < 0.03 and dm.std.item() == pytest.approx(1.0, abs=0.03)


def test_synthetic_uniform_is_bounded_and_centred_teacher():
    dm = SyntheticDataModule(kind="uniform", dim=4, n_train=5000, n_test=1000, val_fraction=0.0)
    dm.setup()
    x = torch.cat([dm.x_train, dm.x_test])
    y = torch.cat([dm.y_train, dm.y_test])
    assert dm.bounds == (0.0, 1.0) and float(x.min()) >= 0.0 and float(x.max()) < 1.0
    assert (x.mean(dim=0) - 0.5).abs().max() < 0.02 and (x.var(dim=0) - 1 / 12).abs().max() < 0.01
    assert torch.equal(y, ((x - 0.5) @ dm.teacher.T).argmax(dim=1))
    assert 0.35 < y.float().mean() < 0.65


def test_synthetic_shifted_gaussian_class_means():
    dm = SyntheticDataModule(kind="shifted_gaussian", dim=5, n_train=8000, n_test=10, shift=3.0, val_fraction=0.0)
    dm.setup()
    assert dm.bounds is None and dm.teacher is None
    assert torch.allclose(dm.class_means.norm(dim=1), torch.full((2,), 3.0))
    for k in range(2):
        xk = dm.x_train[dm.y_train == k]
        assert 0.45 < len(xk) / len(dm.x_train) < 0.55
        assert (xk.mean(dim=0) - dm.class_means[k]).abs().max() < 0.1
        assert (xk.var(dim=0) - 1).abs().max() < 0.1


def test_synthetic_teacher_labels_are_learnable_random_labels_are_not():
    from sklearn.linear_model import LogisticRegression

    def test_accuracy(labels):
        dm = SyntheticDataModule(kind="gaussian", dim=5, n_train=2000, n_test=2000, labels=labels, val_fraction=0.0)
        dm.setup()
        clf = LogisticRegression().fit(dm.x_train.numpy(), dm.y_train.numpy())
        return clf.score(dm.x_test.numpy(), dm.y_test.numpy())

    assert test_accuracy("teacher") > 0.97
    assert 0.4 < test_accuracy("random") < 0.6


def test_synthetic_bad_kind_or_labels():
    with pytest.raises(ConfigError) as e:
        SyntheticDataModule(kind="laplace")
    assert e.value.key == "kind"
    assert "gaussian, shifted_gaussian, uniform" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="^labels: "):
        SyntheticDataModule(labels="noisy")
    a = SyntheticDataModule(kind="uniform", dim=3).describe()
    assert a["kind"] == "uniform" and a["dim"] == 3 and a["labels"] == "teacher" and a["name"] == "synthetic"


# ------------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST (IDX files)
# ------------------------------------------------------------------------------------------------
def test_mnist_official_split_reads_idx_files(tmp_path):
    xtr, ytr, xte, yte = make_idx_tree(tmp_path, "MNIST", n_train=50, n_test=30)
    dm = MNISTDataModule(data_dir=str(tmp_path), val_fraction=0.2)
    dm.check()
    dm.setup()
    assert dm.input_shape == (1, 28, 28) and dm.class_names[0] == "0 - zero"
    assert (len(dm.x_train), len(dm.x_val), len(dm.x_test)) == (40, 10, 30)
    # test split in file order, pixel values exactly k/255 (255 -> 1.0)
    assert torch.equal(dm.x_test, torch.from_numpy(xte).unsqueeze(1).float() / 255)
    assert torch.equal(dm.y_test, torch.from_numpy(yte).long())
    assert float(dm.x_test.max()) == 1.0
    # train + val = the 50 training images, each with its own label and pixels
    ids = ids_of(dm.x_train) + ids_of(dm.x_val)
    assert sorted(ids) == list(range(50))
    for x, y in ((dm.x_train, dm.y_train), (dm.x_val, dm.y_val)):
        for xi, yi, k in zip(x, y, ids_of(x)):
            assert int(yi) == ytr[k] and torch.equal(xi[0], torch.from_numpy(xtr[k]).float() / 255)
    assert dm.describe() == {"name": "mnist", "classes": None, "val_fraction": 0.2, "seed": 0, "max_train": None,
                             "augment": False, "center": False, "official_split": True}


def test_mnist_t10k_only_is_split_stratified(tmp_path):
    xtr, ytr, xte, yte = make_idx_tree(tmp_path, "MNIST", n_test=100, train=False, gz=True)
    # torchvision's MNIST class needs the training files too, even for train=False
    with pytest.raises(RuntimeError):
        torchvision.datasets.MNIST(root=str(tmp_path), train=False)
    with pytest.raises(ConfigError) as e:
        MNISTDataModule(data_dir=str(tmp_path)).check()  # official split: training files missing
    assert e.value.key == "dataset.data_dir" and "train-images-idx3-ubyte" in str(e.value)
    assert "dataset.official_split=false" in str(e.value)
    dm = MNISTDataModule(data_dir=str(tmp_path), official_split=False, test_fraction=0.2, val_fraction=0.0)
    dm.setup()  # only .gz files: decompressed into the raw folder first
    assert (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()
    assert (len(dm.x_train), len(dm.x_test)) == (80, 20)
    assert torch.bincount(dm.y_test, minlength=10).tolist() == [2] * 10  # stratified: 10 per class -> 2 each
    tr_ids, te_ids = ids_of(dm.x_train), ids_of(dm.x_test)
    assert not set(tr_ids) & set(te_ids) and sorted(tr_ids + te_ids) == list(range(100, 200))
    for xi, yi, k in zip(dm.x_test, dm.y_test, te_ids):
        assert int(yi) == yte[k - 100] and torch.equal(xi[0], torch.from_numpy(xte[k - 100]).float() / 255)
    again = MNISTDataModule(data_dir=str(tmp_path), official_split=False, val_fraction=0.0)
    again.setup()
    assert torch.equal(again.x_test, dm.x_test)
    other = MNISTDataModule(data_dir=str(tmp_path), official_split=False, val_fraction=0.0, seed=1)
    other.setup()
    assert set(ids_of(other.x_test)) != set(te_ids)
    assert dm.describe()["test_fraction"] == 0.2 and dm.describe()["official_split"] is False


def test_fashion_mnist_reads_its_own_folder(tmp_path):
    make_idx_tree(tmp_path, "FashionMNIST", n_train=40, n_test=20)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), classes=[9, 0], val_fraction=0.0)
    dm.setup()
    assert dm.class_names == ["Ankle boot", "T-shirt/top"]
    # labels i mod 10: 4 nines and 4 zeros among the 40 training images, 2 + 2 in test
    assert torch.bincount(dm.y_train).tolist() == [4, 4] and torch.bincount(dm.y_test).tolist() == [2, 2]
    # background 3·label: 27/255 for the ankle boots (new label 0), 0 for the T-shirts (new label 1)
    assert torch.allclose(dm.x_train[dm.y_train == 0][:, 0, 27, 0], torch.full((4,), 27 / 255))
    assert float(dm.x_train[dm.y_train == 1][:, 0, 27, 0].abs().sum()) == 0.0
    with pytest.raises(ConfigError, match="no MNIST files under"):
        MNISTDataModule(data_dir=str(tmp_path)).check()  # FashionMNIST files are not MNIST files


def test_mnist_missing_files_config_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        MNISTDataModule(data_dir=str(tmp_path / "nowhere")).setup()
    msg = str(e.value)
    assert e.value.key == "dataset.data_dir" and msg.startswith("dataset.data_dir: no MNIST files under")
    assert "MNIST/raw" in msg and "dataset.download=true" in msg and "\n" not in msg



@pytest.mark.parametrize("may_download", [False, True])
def test_mnist_check_only_complains_when_download_is_off(tmp_path, may_download):
    # check() never downloads; it only decides whether missing files are an error
    dm = MNISTDataModule(data_dir=str(tmp_path / "nowhere"), download=may_download)
    if may_download:
        dm.check()
    else:
        with pytest.raises(ConfigError, match="dataset.data_dir"):
            dm.check()
    assert not (tmp_path / "nowhere").exists()


def test_install_shared_mnist_is_idempotent(tmp_path):
    shared = tmp_path / "shared"
    xte, yte = idx_images(30, 0)
    write_idx(shared / "data" / "mnist-t10k" / "t10k-images-idx3-ubyte", xte, gz=True)
    write_idx(shared / "data" / "mnist-t10k" / "t10k-labels-idx1-ubyte", yte, gz=True)
    data = tmp_path / "data"
    raw = install_shared_mnist(shared, data)
    assert raw == data / "MNIST" / "raw"
    images = raw / "t10k-images-idx3-ubyte"
    assert images.read_bytes()[:4] == struct.pack(">I", 2051) and images.stat().st_size == 16 + 30 * 28 * 28
    stamp = images.stat().st_mtime_ns
    assert data_app_main(["--shared", str(shared), "--data", str(data)]) == 0
    assert images.stat().st_mtime_ns == stamp  # second call keeps the files
    dm = MNISTDataModule(data_dir=str(data), official_split=False, val_fraction=0.0)
    dm.setup()
    assert len(dm.x_train) + len(dm.x_test) == 30
    with pytest.raises(ConfigError, match="shared_dir"):
        install_shared_mnist(tmp_path / "elsewhere", tmp_path / "data2")


# ------------------------------------------------------------------------------------------------
# CIFAR-10 (pickled batches)
# ------------------------------------------------------------------------------------------------
def test_cifar10_batches_round_trip(tmp_path, caplog):
    make_cifar_batches(tmp_path, per_batch=4, n_test=6)
    # torchvision's CIFAR10 checks the official md5 sums and refuses these files ...
    with pytest.raises(RuntimeError):
        torchvision.datasets.CIFAR10(root=str(tmp_path), train=False)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), val_fraction=0.0)
    assert not dm.official_files()
    with caplog.at_level(logging.WARNING, logger="advlab.data.torchvision_data"):
        dm.setup()  # ... so the module reads the same pickle format itself, and says so
    assert any("md5" in r.getMessage() for r in caplog.records)
    assert dm.class_names == CIFAR_NAMES and dm.input_shape == (3, 32, 32)
    assert (len(dm.x_train), len(dm.x_test)) == (20, 6)
    rows, labels = cifar_rows(6, 100)
    assert torch.equal(dm.x_test, torch.from_numpy(rows.reshape(6, 3, 32, 32)).float() / 255)
    assert dm.y_test.tolist() == labels
    # training images: unique index in the blue channel's first pixel; label = index mod 10
    idx = [int(v) for v in torch.round(dm.x_train[:, 2, 0, 0] * 255)]
    assert sorted(idx) == list(range(20)) and dm.y_train.tolist() == [k % 10 for k in idx]
    assert torch.equal(dm.x_train[:, 0, 5, 7], torch.tensor([1.0 if k % 2 == 0 else 0.0 for k in idx]))
    # per-channel statistics of the training split: R is 0/1 half and half, G constant 0.2 (std -> 1)
    assert dm.mean.shape == (3,) and dm.std.shape == (3,)
    assert dm.mean[0].item() == pytest.approx(0.5) and dm.std[0].item() == pytest.approx(0.5)
    assert dm.mean[1].item() == pytest.approx(0.2) and dm.std[1].item() == 1.0
    assert dm.mean[2].item() == pytest.approx(dm.x_train[:, 2].mean().item(), abs=1e-6)


def test_cifar10_missing_batches(tmp_path):
    with pytest.raises(ConfigError) as e:
        CIFAR10DataModule(data_dir=str(tmp_path)).check()
    assert e.value.key == "dataset.data_dir" and "cifar-10-batches-py" in str(e.value)
    make_cifar_batches(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(ConfigError, match="data_batch_3"):
        CIFAR10DataModule(data_dir=str(tmp_path)).check()


# ------------------------------------------------------------------------------------------------
# CIFAR-10 JPEG zips
# ------------------------------------------------------------------------------------------------
def test_cifar10_jpeg_zips_extract_decode_and_cache(tmp_path):
    zip_dir, data_dir = tmp_path / "zips", tmp_path / "data"
    make_jpeg_zips(zip_dir, {"train": 2, "test": 1})
    dm = CIFAR10JPEGDataModule(data_dir=str(data_dir), zip_dir=str(zip_dir), val_fraction=0.0)
    dm.check()
    dm.setup()
    root = data_dir / "cifar10-jpeg"
    assert (root / "train" / "cat").is_dir() and (root / "test" / "truck" / "0000.jpg").is_file()
    assert not [p for p in root.iterdir() if p.name.startswith(".extract")]  # temp folders gone
    assert (root / "cifar10-jpeg-uint8.pt").is_file()
    assert dm.class_names == CIFAR_NAMES and dm.input_shape == (3, 32, 32)
    assert (len(dm.x_train), len(dm.x_test)) == (20, 10)
    assert dm.y_test.tolist() == list(range(10))  # ImageFolder order: class by class
    for x, y in ((dm.x_test, dm.y_test), (dm.x_train, dm.y_train)):
        for xi, yi in zip(x, y):
            c = int(yi)
            options = [torch.tensor(jpeg_colour(c, i), dtype=torch.float32) / 255 for i in range(2)]
            colour = xi.mean(dim=(1, 2))
            assert min(float((colour - o).abs().max()) for o in options) < 3 / 255  # JPEG of a flat colour
            assert float((xi - xi[:, :1, :1]).abs().max()) < 3 / 255  # and flat it stays
    assert torch.bincount(dm.y_train).tolist() == [2] * 10
    # a second run loads the tensor cache: works without zips or extracted folders
    import shutil

    shutil.rmtree(root / "train")
    shutil.rmtree(root / "test")
    again = CIFAR10JPEGDataModule(data_dir=str(data_dir), zip_dir=str(tmp_path / "gone"), val_fraction=0.0)
    again.check()
    again.setup()
    assert torch.equal(again.x_train, dm.x_train) and torch.equal(again.y_test, dm.y_test)
    assert not (root / "train").exists()


def test_cifar10_jpeg_test_split_is_class_interleaved_so_first_points_cover_every_class(tmp_path):
    """Reproduction: the JPEG copy's test split came class folder by class folder, so "the first 200 / 1,000
    test images" that evaluations and probes take were all airplanes. Now the i-th image of every class
    comes before any class's (i+1)-th, each still with its own label."""
    zip_dir = tmp_path / "zips"
    make_jpeg_zips(zip_dir, {"train": 2, "test": 3})
    dm = CIFAR10JPEGDataModule(data_dir=str(tmp_path / "data"), zip_dir=str(zip_dir), val_fraction=0.0)
    dm.setup()
    assert dm.y_test.tolist() == list(range(10)) * 3
    for k, xi in enumerate(dm.x_test):  # position k: class k mod 10's (k // 10)-th file, moved with its label
        colour = torch.tensor(jpeg_colour(k % 10, k // 10), dtype=torch.float32) / 255
        assert float((xi.mean(dim=(1, 2)) - colour).abs().max()) < 3 / 255


def test_interleaving_by_class_keeps_each_class_order_and_leaves_unsorted_splits_alone():
    from advlab.data.arrays import interleaved_by_class, is_sorted_by_class

    y = torch.tensor([0, 0, 0, 1, 2, 2])
    order = interleaved_by_class(y)
    assert order.tolist() == [0, 3, 4, 1, 5, 2] and y[order].tolist() == [0, 1, 2, 0, 2, 0]
    assert is_sorted_by_class(y) and not is_sorted_by_class(torch.tensor([0, 1, 0])) and not is_sorted_by_class(torch.tensor([4, 4]))
    from advlab.data import DigitsDataModule

    dm = DigitsDataModule(seed=0)
    dm.setup()
    assert not is_sorted_by_class(dm.y_test) and len(set(dm.y_test[:30].tolist())) == 10  # digits: its own order, untouched


def test_cifar10_jpeg_missing_zips(tmp_path):
    with pytest.raises(ConfigError) as e:
        CIFAR10JPEGDataModule(data_dir=str(tmp_path / "data"), zip_dir=str(tmp_path / "nozips")).check()
    assert e.value.key == "dataset.zip_dir" and "train.zip" in str(e.value)


# ------------------------------------------------------------------------------------------------
# real shared MNIST test files (slow)
# ------------------------------------------------------------------------------------------------
SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.mark.slow
def test_real_shared_mnist_t10k_ones_and_twos(tmp_path):
    if not (SHARED / "data" / "mnist-t10k" / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"no shared MNIST files under {SHARED}")
    install_shared_mnist(SHARED, tmp_path)
    dm = MNISTDataModule(data_dir=str(tmp_path), official_split=False, classes=[1, 2], val_fraction=0.0,
                         test_fraction=0.3)
    dm.setup()
    y = torch.cat([dm.y_train, dm.y_test])
    assert int((y == 0).sum()) == 1135 and int((y == 1).sum()) == 1032  # ones and twos of t10k
    assert dm.class_names == ["1 - one", "2 - two"] and dm.input_shape == (1, 28, 28)
    assert len(dm.x_test) == round(0.3 * 2167) or len(dm.x_test) == round(0.3 * 2167) + 1
    full = MNISTDataModule(data_dir=str(tmp_path), official_split=False, val_fraction=0.0)
    full.setup()
    assert len(full.x_train) + len(full.x_test) == 10000 and (len(full.x_train), len(full.x_test)) == (8000, 2000)
    assert float(full.x_train.max()) == 1.0 and full.mean.item() == pytest.approx(0.1325, abs=0.003)


@pytest.mark.slow
def test_real_shared_cifar10_jpeg(tmp_path):
    zip_dir = SHARED / "data" / "cifar10-jpeg"
    if not (zip_dir / "train.zip").is_file() or not (zip_dir / "test.zip").is_file():
        pytest.skip(f"no shared CIFAR-10 JPEG zips under {zip_dir}")
    dm = CIFAR10JPEGDataModule(data_dir=str(tmp_path), zip_dir=str(zip_dir), val_fraction=0.1)
    dm.setup()
    assert (len(dm.x_train), len(dm.x_val), len(dm.x_test)) == (45000, 5000, 10000)
    assert dm.class_names == CIFAR_NAMES
    assert torch.bincount(dm.y_test).tolist() == [1000] * 10
    assert torch.bincount(dm.y_test[:200]).tolist() == [20] * 10  # the first test points cover every class
    assert torch.bincount(torch.cat([dm.y_train, dm.y_val])).tolist() == [5000] * 10
    # the well-known CIFAR-10 channel means (0.491, 0.482, 0.447), up to JPEG error and the val carve-out
    assert torch.allclose(dm.mean, torch.tensor([0.4914, 0.4822, 0.4465]), atol=0.005)


def test_center_subtracts_the_training_mean_image_and_unbounds():
    from advlab.data import DigitsDataModule

    plain, centred = DigitsDataModule(seed=0), DigitsDataModule(seed=0, center=True)
    plain.setup(), centred.setup()
    mean_image = plain.x_train.mean(0, keepdim=True)
    assert torch.allclose(centred.x_train, plain.x_train - mean_image, atol=1e-6)
    assert torch.allclose(centred.x_test, plain.x_test - mean_image, atol=1e-6)
    assert torch.allclose(centred.x_val, plain.x_val - mean_image, atol=1e-6)
    assert centred.bounds is None and plain.bounds == (0.0, 1.0)
    assert centred.x_train.mean(0).abs().max() < 1e-5
    assert centred.describe()["center"] is True


def test_center_constant_subtracts_one_number_from_every_pixel():
    """Kumano et al.'s two-layer code subtracts MNIST's scalar mean 0.1307 (FMNIST 0.2860) from every pixel
    (s-kumano/perturbation-learning, utils/datasets.py: `data -= dataset_cls.mean[0]`), not a mean image."""
    from advlab.data import DigitsDataModule

    plain, shifted = DigitsDataModule(seed=0), DigitsDataModule(seed=0, center_constant=0.1307)
    plain.setup(), shifted.setup()
    for split in ("x_train", "x_val", "x_test"):
        assert torch.equal(getattr(shifted, split), getattr(plain, split) - torch.tensor(0.1307))
    # a white pixel is 1 - 0.1307, a black one -0.1307: the same shift everywhere, not the mean image
    assert float(shifted.x_train.max()) == pytest.approx(0.8693, abs=1e-6)
    assert float(shifted.x_train.min()) == pytest.approx(-0.1307, abs=1e-6)
    assert shifted.bounds is None  # as the authors', the perturbations are never clipped
    assert shifted.describe()["center_constant"] == 0.1307 and shifted.describe()["center"] is False
    assert "center_constant" not in plain.describe()  # default: the cache keys of earlier data stay
    with pytest.raises(ConfigError, match="^center_constant: give at most one centring"):
        DigitsDataModule(center=True, center_constant=0.1307)
    with pytest.raises(ConfigError, match="^center_constant: must be null or a finite number"):
        DigitsDataModule(center_constant="mean")
