"""Inputs the readers and loaders must check themselves (on both toolbox backends): labels of a split
file, duplicated and overlapping images, unreadable val/test images (never replaced silently), 16-bit
grey images, few-shot subsets of splits with absolute paths."""
import json
import os
import os.path as osp

import numpy as np
import pytest
from PIL import Image

from fairclip.datasets.common import EvalSplit, SkipUnreadableWrapper, UnreadableEvalImage, open_rgb
from fairclip.datasets.decoded_cache import decode_resized, open_decoded_cache
from fairclip.toolbox.errors import UserError
from fairclip.tools.make_miniature_data import BUILDERS
from tests.conftest import build_dataset, build_seeded, make_dataset_cfg, trainer_cfg

SPLIT = "split_zhou_DescribableTextures.json"


def one_line(exc_info):
    message = str(exc_info.value)
    assert "\n" not in message
    return message


@pytest.fixture
def dtd(tmp_path):
    """(root, dataset folder, split dict) of a fresh DTD miniature (3 classes)."""
    info = BUILDERS["dtd"](tmp_path)
    return tmp_path, info["dataset_dir"], info["split"]


def write_split(dataset_dir, split):
    path = osp.join(dataset_dir, SPLIT)
    with open(path, "w") as f:
        json.dump(split, f)
    return path


def relabel(split, fn):
    return {name: [[p, *fn(y, c)] for p, y, c in entries] for name, entries in split.items()}


# --------------------------------------------------------------------------- labels
@pytest.mark.parametrize("new_label", [99, 3])
def test_labels_must_be_0_to_k_minus_1(dtd, new_label):
    """A stray label (99) or a gap (0, 1, 3) would size the classifier as max + 1 and misalign names."""
    root, folder, split = dtd
    path = write_split(folder, relabel(split, lambda y, c: (new_label if y == 2 else y, c)))
    with pytest.raises(UserError) as exc:
        build_dataset(root, "dtd")
    msg = one_line(exc)
    assert path in msg and "labels must be 0..2 for 3 classes" in msg and "label {}".format(new_label) in msg


def test_float_label_is_refused_not_truncated(dtd):
    root, folder, split = dtd
    split["train"][0][1] = split["train"][0][1] + 0.7  # int() would truncate it back to a valid label
    path = write_split(folder, split)
    with pytest.raises(UserError, match="integer label") as exc:
        build_dataset(root, "dtd")
    assert path in one_line(exc)


def test_one_name_per_label_and_one_label_per_name(dtd):
    root, folder, split = dtd
    names = sorted({(y, c) for entries in split.values() for _, y, c in entries})
    path = write_split(folder, relabel(split, lambda y, c: (y, names[1][1] if y == 2 else c)))
    with pytest.raises(UserError, match="class name '{}' has two labels, 1 and 2".format(names[1][1])) as exc:
        build_dataset(root, "dtd")
    assert path in one_line(exc)
    # The same image listed with two labels.
    p, y, c = split["train"][0]
    other = [n for n in names if n[0] != y][0]
    split["test"].append([p, other[0], other[1]])
    write_split(folder, split)
    with pytest.raises(UserError, match="is listed with labels"):
        build_dataset(root, "dtd")


def test_duplicates_and_train_test_overlap_are_counted_and_announced(dtd, capsys):
    root, folder, split = dtd
    split["train"].append(list(split["train"][0]))  # a duplicate within train
    split["train"].append(list(split["test"][0]))  # a test image also in train
    path = write_split(folder, split)
    ds = build_dataset(root, "dtd")
    assert ds.data_checks == {"duplicates": {"train": 1, "val": 0, "test": 0}, "train_test_overlap": 1}
    out = capsys.readouterr().out
    assert "WARNING: {}: the 'train' split lists 1 image(s) more than once".format(path) in out
    assert "WARNING: {}: 1 test image(s) are also in the train split".format(path) in out


# --------------------------------------------------------------------------- unreadable val/test images
def test_unreadable_test_image_fails_by_default_and_is_never_replaced(dtd):
    """Issue 17: a 0-byte test image was replaced by another one (a warning only, the count unchanged)."""
    root, folder, split = dtd
    empty = osp.join(folder, "images", split["test"][0][0])
    open(empty, "wb").close()
    with pytest.raises(UserError) as exc:
        build_dataset(root, "dtd")
    msg = one_line(exc)
    assert empty in msg and "DATASET.SKIP_UNREADABLE_EVAL" in msg and "never changed silently" in msg

    # A non-empty undecodable file is found when read: an error on the PIL path and the decoded cache.
    with open(empty, "wb") as f:
        f.write(b"not an image")
    cfg = make_dataset_cfg(root, "dtd", "DATASET.MAX_UNREADABLE", 1.0)
    ds = build_dataset(root, "dtd", "DATASET.MAX_UNREADABLE", 1.0)
    assert isinstance(ds.test, EvalSplit) and isinstance(ds.val, EvalSplit)
    wrapper = SkipUnreadableWrapper(cfg, ds.test)
    bad = [i for i, it in enumerate(ds.test) if it.impath == empty][0]
    with pytest.raises(UnreadableEvalImage, match="test image .*cannot be decoded") as exc:
        wrapper[bad]
    assert empty in one_line(exc)
    with pytest.raises(UserError, match="test image .*cannot be decoded.*SKIP_UNREADABLE_EVAL"):
        open_decoded_cache([it.impath for it in ds.test], 32, "memory", max_unreadable=1.0, eval_split="test")


def test_skipping_unreadable_test_images_is_explicit_and_recorded(dtd, tiny_clip, tmp_path, capsys):
    root, folder, split = dtd
    empty = osp.join(folder, "images", split["test"][0][0])
    open(empty, "wb").close()
    cfg = trainer_cfg("ZeroshotCLIP", "dtd", str(root), str(tmp_path / "run"), "MODEL.BACKBONE.PATH", tiny_clip,
                      "DATALOADER.NUM_WORKERS", "0", "DATASET.SKIP_UNREADABLE_EVAL", "True", "VERBOSE", "False")
    trainer = build_seeded(cfg)
    assert "left out of the test set" in capsys.readouterr().out
    assert empty not in [it.impath for it in trainer.dm.dataset.test]
    trainer.test()
    result = json.load(open(tmp_path / "run" / "results.json"))
    proto = result["protocol"]
    assert proto["num_eval_images"] == len(split["test"]) - 1
    assert proto["skipped_eval_images"] == {"count": 1, "paths": [empty]}
    assert proto["data_checks"]["train_test_overlap"] == 0

    from fairclip.tools.results_table import build_table, load_run

    table = build_table([load_run(str(tmp_path / "run" / "results.json"))])
    assert "1 (" in table["protocol"]["ZeroshotCLIP"]["skipped eval images"]


# --------------------------------------------------------------------------- decoding
def test_16_bit_grey_png_decodes_like_its_8_bit_version(tmp_path):
    """PIL's convert("RGB") clips 16-bit values to 255 (all white); both image paths scale them."""
    grey8 = (np.arange(48 * 40).reshape(48, 40) % 251).astype(np.uint8)
    path = str(tmp_path / "g16.png")
    Image.fromarray(grey8.astype(np.uint16) * 257).save(path)
    assert Image.open(path).mode.startswith("I")
    expected = np.repeat(grey8[:, :, None], 3, axis=2)
    assert np.array_equal(np.asarray(open_rgb(path)), expected)
    assert np.array_equal(decode_resized(path, 64), expected)


# --------------------------------------------------------------------------- few-shot
def test_fewshot_subset_of_a_split_with_absolute_paths(dtd):
    """Absolute paths in a split file are used as they are, and stay absolute in the few-shot cache."""
    root, folder, split = dtd
    images = osp.join(str(root), "elsewhere")  # outside the dataset folder
    os.rename(osp.join(folder, "images"), images)
    os.mkdir(osp.join(folder, "images"))
    absolute = {name: [[osp.join(images, p), y, c] for p, y, c in entries] for name, entries in split.items()}
    write_split(folder, absolute)
    first = build_dataset(root, "dtd", "DATASET.NUM_SHOTS", 1, "SEED", 1)
    cache = json.load(open(osp.join(folder, "split_fewshot_json", "shot_1-seed_1.json")))
    assert all(osp.isabs(p) for p, _, _ in cache["train"])
    again = build_dataset(root, "dtd", "DATASET.NUM_SHOTS", 1, "SEED", 1)  # read back from the cache
    assert [it.impath for it in again.train_x] == [it.impath for it in first.train_x]
    assert len(first.train_x) == 3 and all(osp.isfile(it.impath) for it in first.train_x)
