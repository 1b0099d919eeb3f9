"""advlab.data.imagefolder on class-folder trees this file writes (PNG and JPEG of several sizes, read
through torchvision's ImageFolder): resolution, labels, class subsets and merges, per-class caps, the
tensor cache, Tiny-ImageNet's annotated validation layout, bad input, and a real advlab-train run."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from advlab.data.imagefolder import ImageFolderDataModule
from advlab.errors import ConfigError
from conftest import run_advlab

FOLDERS = ["ant", "bee", "cat", "dog"]  # sorted: the folder indices 0..3
COLOURS = {"ant": (220, 30, 30), "bee": (30, 200, 40), "cat": (40, 50, 210), "dog": (200, 200, 40)}
FRAME = (128, 128, 128)
SIZES = [(24, 12), (12, 24), (16, 16), (30, 20)]  # (width, height): landscape, portrait, square
TRAIN_COUNTS = {"ant": 3, "bee": 3, "cat": 2, "dog": 2}


def write_image(path: Path, colour, size, fmt: str) -> None:
    """A flat ``colour`` image whose long side ends in grey strips: outside the centre crop, so a
    stretching resize (no crop) would show them. JPEGs are flat (no edges to ring)."""
    w, h = size
    img = Image.new("RGB", size, colour)
    if fmt == "PNG" and w != h:
        band = (abs(w - h) // 2) - 2  # 2 px of grey past the antialiasing reach of the crop's edge pixels
        for box in ((0, 0, band, h), (w - band, 0, w, h)) if w > h else ((0, 0, w, band), (0, h - band, w, h)):
            img.paste(FRAME, box)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, quality=95)


def write_tree(root: Path, val_per_class: int = 1) -> Path:
    for c, name in enumerate(FOLDERS):
        for i in range(TRAIN_COUNTS[name]):
            fmt = "PNG" if i % 2 == 0 else "JPEG"
            write_image(root / "train" / name / f"{name}_{i}.{fmt.lower()}", COLOURS[name], SIZES[(c + i) % 4], fmt)
        for i in range(val_per_class):
            write_image(root / "val" / name / f"v{i}.png", COLOURS[name], SIZES[(c + i + 1) % 4], "PNG")
    (root / "train" / "ant" / "notes.txt").write_text("not an image")  # ignored, as ImageFolder does
    return root


@pytest.fixture
def tree(tmp_path) -> Path:
    return write_tree(tmp_path / "tree")


def datamodule(root: Path, tmp_path: Path, **kwargs) -> ImageFolderDataModule:
    settings = {"resolution": 8, "val_fraction": 0.0, "cache_dir": str(tmp_path / "cache"), **kwargs}
    return ImageFolderDataModule(root=str(root), **settings)


def colour_names(x: torch.Tensor) -> list[str]:
    """The folder whose colour each image is (nearest in RGB)."""
    table = torch.tensor([COLOURS[f] for f in FOLDERS], dtype=torch.float32) / 255
    means = x.mean(dim=(2, 3))
    return [FOLDERS[int(i)] for i in torch.cdist(means, table).argmin(1)]


def folder_of_each(dm) -> tuple[list[str], list[str]]:
    """(the folder of each training image by its colour, its class name by its label)."""
    return colour_names(dm.x_train), [dm.class_names[int(y)] for y in dm.y_train]


def test_every_image_is_resized_centre_cropped_and_labelled_by_its_folder(tree, tmp_path):
    dm = datamodule(tree, tmp_path)
    assert dm.planned_shape() == ((3, 8, 8), 4)  # known before any decoding: the pre-flight builds the model
    dm.setup()
    assert dm.class_names == FOLDERS and dm.num_classes == 4
    assert tuple(dm.x_train.shape) == (10, 3, 8, 8) and tuple(dm.x_test.shape) == (4, 3, 8, 8)
    assert torch.bincount(dm.y_train).tolist() == [3, 3, 2, 2] and dm.y_test.tolist() == [0, 1, 2, 3]
    for x, y in ((dm.x_train, dm.y_train), (dm.x_test, dm.y_test)):
        assert colour_names(x) == [FOLDERS[int(v)] for v in y]
        target = torch.tensor([COLOURS[FOLDERS[int(v)]] for v in y], dtype=torch.float32).view(-1, 3, 1, 1) / 255
        deviation = (x - target).abs().amax(dim=(1, 2, 3))
        assert float(deviation.max()) < 6 / 255  # no grey strip anywhere: the crop is central, JPEG error only
        assert int((deviation <= 1 / 255).sum()) >= len(y) // 2  # the PNGs: exact colour after resize + crop
    wide = datamodule(tree, tmp_path, resolution=12, resize=16)
    wide.setup()
    assert tuple(wide.x_test.shape) == (4, 3, 12, 12) and wide.input_shape == (3, 12, 12)


def test_class_subset_and_groups_by_name_index_and_range(tree, tmp_path):
    subset = datamodule(tree, tmp_path, class_subset=["dog", "ant"])
    assert subset.planned_shape() == ((3, 8, 8), 2)
    subset.setup()
    assert subset.class_names == ["dog", "ant"]  # labels in the order given
    assert sorted(colour_names(subset.x_train)) == ["ant"] * 3 + ["dog"] * 2
    folders, classes = folder_of_each(subset)
    assert folders == classes

    merged = {"insect": ["ant", "bee"], "mammal": ["cat", "dog"]}
    forms = [merged, {"insect": [[0, 1]], "mammal": [[2, 3]]}, {"insect": [0, "bee"], "mammal": [[2, 2], 3]}]
    loaded = []
    for groups in forms:
        dm = datamodule(tree, tmp_path, class_groups=groups)
        assert dm.planned_shape() == ((3, 8, 8), 2)
        dm.setup()
        assert dm.class_names == ["insect", "mammal"]
        folders, classes = folder_of_each(dm)
        assert [("insect" if f in ("ant", "bee") else "mammal") for f in folders] == classes
        # the test split comes class-interleaved (it is read folder by folder), each image with its label
        assert torch.bincount(dm.y_train).tolist() == [6, 4] and dm.y_test.tolist() == [0, 1, 0, 1]
        assert [("insect" if f in ("ant", "bee") else "mammal") for f in colour_names(dm.x_test)] == [dm.class_names[int(v)] for v in dm.y_test]
        loaded.append((dm.x_train, dm.y_train))
    for x, y in loaded[1:]:
        assert torch.equal(x, loaded[0][0]) and torch.equal(y, loaded[0][1])


def test_max_per_class_is_a_seeded_choice_in_each_split(tmp_path):
    root = write_tree(tmp_path / "tree", val_per_class=3)
    picks = []
    for seed in range(6):
        dm = datamodule(root, tmp_path, max_per_class=2, max_test_per_class=1, subset_seed=seed)
        dm.setup()
        assert torch.bincount(dm.y_train).tolist() == [2, 2, 2, 2] and torch.bincount(dm.y_test).tolist() == [1, 1, 1, 1]
        picks.append(dm.plan().samples["train"])
    again = datamodule(root, tmp_path, max_per_class=2, max_test_per_class=1, subset_seed=0)
    assert again.plan().samples["train"] == picks[0]  # the same seed, the same images
    ants = {tuple(p for p, _ in pick if "/ant/" in p) for pick in picks}
    assert len(ants) > 1  # a random choice of 2 of the 3 ants, not always the first two


def test_cache_is_reused_and_rebuilt_when_a_file_or_setting_changes(tree, tmp_path):
    first = datamodule(tree, tmp_path)
    first.setup()
    cache = first.cache_path
    built = cache.stat()
    second = datamodule(tree, tmp_path)
    second.setup()
    assert cache.stat().st_mtime_ns == built.st_mtime_ns and cache.stat().st_ino == built.st_ino  # read, not rebuilt
    assert torch.equal(second.x_train, first.x_train) and torch.equal(second.y_test, first.y_test)

    image = tree / "val" / "cat" / "v0.png"
    write_image(image, (250, 250, 250), (16, 16), "PNG")  # a changed file (new size and mtime)
    os.utime(image, ns=(built.st_mtime_ns + 10**9, built.st_mtime_ns + 10**9))
    third = datamodule(tree, tmp_path)
    third.setup()
    assert cache.stat().st_mtime_ns != built.st_mtime_ns
    assert float(third.x_test[2].min()) > 0.95 and torch.equal(third.x_train, first.x_train)

    datamodule(tree, tmp_path, resolution=6).setup()
    datamodule(tree, tmp_path, class_subset=["ant", "cat"]).setup()
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 3  # one file per setting
    assert datamodule(tree, tmp_path).describe()["content"] == third.describe()["content"]

    cache.write_bytes(b"not a torch file")  # a damaged cache is rebuilt, not trusted
    fourth = datamodule(tree, tmp_path)
    fourth.setup()
    assert torch.equal(fourth.x_test, third.x_test)


def write_tiny_imagenet(root: Path) -> Path:
    """Tiny-ImageNet's layout: train/<wnid>/images/*.JPEG (+ <wnid>_boxes.txt), val/images/*.JPEG
    labelled by val/val_annotations.txt (<file> TAB <wnid> TAB x0 TAB y0 TAB x1 TAB y1)."""
    wnids = {"n01443537": "ant", "n01629819": "bee", "n01641577": "cat"}
    lines = []
    for k, (wnid, colour) in enumerate(wnids.items()):
        for i in range(2):
            write_image(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", COLOURS[colour], (16, 16), "JPEG")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t15\t15\n")
    for j, wnid in enumerate(["n01641577", "n01443537", "n01629819", "n01641577"]):
        write_image(root / "val" / "images" / f"val_{j}.JPEG", COLOURS[wnids[wnid]], (16, 16), "JPEG")
        lines.append(f"val_{j}.JPEG\t{wnid}\t0\t2\t13\t15")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def test_tiny_imagenet_annotated_validation_layout(tmp_path):
    root = write_tiny_imagenet(tmp_path / "tiny-imagenet-200")
    dm = datamodule(root, tmp_path, val_layout="annotations")
    dm.setup()
    assert dm.class_names == ["n01443537", "n01629819", "n01641577"]
    assert tuple(dm.x_train.shape) == (6, 3, 8, 8) and dm.y_test.tolist() == [2, 0, 1, 2]
    assert colour_names(dm.x_test) == ["cat", "ant", "bee", "cat"]
    with pytest.raises(ConfigError, match=r"^dataset\.val_dir: .*val_layout=annotations"):
        datamodule(root, tmp_path, val_layout="folders").check()
    (root / "val" / "images" / "val_3.JPEG").unlink()
    with pytest.raises(ConfigError, match=r"^dataset\.val_layout: .*val_3\.JPEG"):
        datamodule(root, tmp_path, val_layout="annotations").setup()


BUILD_ERRORS = [  # refused by the constructor: its bare parameter (the pre-flight puts it under `dataset`, or a spec's dataset node)
    ({"resolution": 0}, "resolution", "integer >= 1"),
    ({"resolution": 2.5}, "resolution", "integer >= 1"),
    ({"resolution": "64px"}, "resolution", "integer >= 1"),
    ({"resize": 4}, "resize", ">= 8"),
    ({"val_layout": "flat"}, "val_layout", "allowed: folders, annotations"),
    ({"class_subset": ["ant"], "class_groups": {"a": ["ant"], "b": ["bee"]}}, "class_groups", "not both"),
    ({"class_subset": [-1]}, "dataset.class_subset", "allowed: class folder names"),
    ({"class_groups": {"a": [[3, 1]]}}, "dataset.class_groups.a", "[first, last]"),
    ({"class_groups": ["ant", "bee"]}, "dataset.class_groups", "mapping class name"),
]
CHECK_ERRORS = [  # refused by check(), before any decoding
    ({"root": "absent"}, "dataset.root", "no folder"),
    ({"train_dir": "training"}, "dataset.train_dir", "holds: tree"),
    ({"val_dir": "validation"}, "dataset.val_dir", "no folder"),
    ({"class_subset": ["ant", "wasp", "yak"]}, "dataset.class_subset", "no class folder wasp, yak under"),
    ({"class_groups": {"a": ["ant"], "b": ["zebra"]}}, "dataset.class_groups.b", "it holds 4: ant, bee, cat, dog"),
    ({"class_groups": {"a": ["ant", "bee"], "b": [[1, 2]]}}, "dataset.class_groups", "bee is in both a and b"),
    ({"class_groups": {"a": [0], "b": [[2, 9]]}}, "dataset.class_groups.b", "outside 0..3"),
    ({"class_subset": ["ant", 0]}, "dataset.class_subset", "more than once"),
    ({"class_subset": ["cat"]}, "dataset.class_subset", "at least 2"),
]


@pytest.mark.parametrize("settings,key,text", BUILD_ERRORS + CHECK_ERRORS, ids=[f"{k}:{t}" for _, k, t in BUILD_ERRORS + CHECK_ERRORS])
def test_bad_input_is_one_line_naming_the_key_before_any_decoding(tmp_path, settings, key, text):
    parent = tmp_path / "data"
    write_tree(parent / "tree")
    settings = dict(settings)
    root = parent / settings.pop("root", "tree")
    if "train_dir" in settings:
        root = parent  # a folder without the training folder: the error lists what it holds
    with pytest.raises(ConfigError) as err:
        datamodule(root, tmp_path, **settings).check()
    assert err.value.key == key and text in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert not (tmp_path / "cache").exists()  # nothing decoded, nothing written


def test_a_folder_without_images_is_refused(tmp_path):
    for name in FOLDERS:
        (tmp_path / "empty" / "train" / name).mkdir(parents=True)
        (tmp_path / "empty" / "train" / name / "readme.txt").write_text("no images here")
    with pytest.raises(ConfigError, match=r"^dataset\.root: .*holds no images; allowed: files ending in \.jpg"):
        datamodule(tmp_path / "empty", tmp_path).check()
    assert datamodule(tmp_path / "absent", tmp_path).planned_shape() is None  # unknown there: the pre-flight skips the model


def test_cli_refuses_a_missing_folder_in_one_line(tmp_path):
    run = run_advlab(tmp_path, "dataset=imagefolder", f"dataset.root={tmp_path / 'absent'}", "method=standard", "logger=csv")
    assert run.returncode == 2, run.log[-2000:]
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("advlab-train: error: dataset.root: no folder"), run.stderr
    assert "Traceback" not in run.log and not run.run_dir.exists()


def test_training_on_a_written_tree_gives_a_model_with_one_output_per_merged_class(tmp_path):
    from advlab.api import load_run

    root = write_tree(tmp_path / "tree", val_per_class=2)
    run = run_advlab(tmp_path, "dataset=imagefolder", f"dataset.root={root}", "dataset.resolution=8",
                     "dataset.class_groups={insect:[ant,bee],cat:[cat],dog:[3]}", "dataset.batch_size=4",
                     "method=standard", "arch=cnn", "arch.channels=[8]", "arch.hidden=16", "trainer.max_epochs=2",
                     "logger=csv")
    assert run.returncode == 0, run.stderr[-3000:]
    assert 0.0 <= run.metrics["test/acc"] <= 1.0
    loaded = load_run(run.run_dir)
    assert loaded.datamodule.class_names == ["insect", "cat", "dog"]
    logits = loaded.model(loaded.datamodule.x_test)
    assert tuple(logits.shape) == (8, 3)
