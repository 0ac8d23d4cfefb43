"""Inputs the readers and loaders must check themselves (on both toolbox backends): labels of a split
file, duplicated and overlapping images, unreadable val/test images (never replaced silently), 16-bit
grey images, few-shot subsets of splits with absolute paths."""
import json
import os
import os.path as osp

import numpy as np
import pytest
from PIL import Image

from fairclip.config import get_cfg, merge_config_file
from fairclip.datasets.common import SkipUnreadableWrapper
from fairclip.datasets.decoded_cache import decode_resized, open_decoded_cache
from fairclip.toolbox.errors import UserError
from fairclip.tools.make_miniature_data import BUILDERS
from tests.conftest import build_dataset, build_seeded, make_dataset_cfg, one_line, small_fair_cfg, trainer_cfg

SPLIT = "split_zhou_DescribableTextures.json"


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
    from fairclip.datasets.common import EvalSplit, UnreadableEvalImage

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
    assert np.array_equal(decode_resized(path, 64), expected)  # the decoded cache
    from fairclip.toolbox import Datum

    cfg = make_dataset_cfg(tmp_path, "dtd")
    item = SkipUnreadableWrapper(cfg, [Datum(impath=path, label=0, classname="grey")])[0]  # the PIL path
    assert np.array_equal(np.asarray(item["img"]), expected)


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


# --------------------------------------------------------------------------- config, template, description files
@pytest.mark.parametrize("content, message", [
    ("OPTIM:\n  LR: [0.1\n", "is not valid YAML (line 3, column 1)"),
    ("OPTIM:\n\tLR: 0.1\n", "is not valid YAML (line 2, column 1)"),
    ("OPTIM:\n  LR: !!python/object/apply:os.system ['touch {marker}']\n", "line 2: could not determine a constructor"),
    ("OPTIM:\n  LR: .nan\n", "OPTIM.LR = nan must be a finite number"),
    ("OPTIM:\n  LR: -.inf\n", "OPTIM.LR = -inf must be a finite number"),
    ("- OPTIM\n", "must hold a mapping of config keys (KEY: value), not a list"),
    ("OPTIM: 3\n", "Type mismatch"),
    (b"OPTIM:\n  NAME: caf\xe9\n", "is not UTF-8 text (byte 0xe9 at offset 18)"),
    ("OPTIM:\n  NAME: sgd\n".encode("utf-16"), "is UTF-16 text; save it as UTF-8"),
])
def test_bad_config_files_are_one_line(tmp_path, content, message):
    path = tmp_path / "method.yaml"
    marker = tmp_path / "code_ran"
    if isinstance(content, str):
        content = content.format(marker=marker).encode()
    path.write_bytes(content)
    with pytest.raises(UserError) as exc:
        merge_config_file(get_cfg(), str(path), "method config file")
    msg = one_line(exc)
    assert msg.startswith("method config file '{}'".format(path)) and message in msg
    assert not marker.exists()


@pytest.mark.parametrize("template, message", [
    ("a photo of {x} {}.", "has 2 replacement fields"),
    ("a photo of {x}.", "has the field '{x}' instead of '{}'"),
    ("a {photo of a {}.", "has an unmatched brace"),
    ("a photo of a {}}.", "has an unmatched brace"),
    ("a photo of a {!r}.", "has the field '{!r}' instead of '{}'"),
])
def test_bad_templates_are_one_line(tmp_path, template, message):
    from fairclip.datasets.templates import get_templates

    path = tmp_path / "templates.json"
    path.write_text(json.dumps(["a {{literal}} photo of a {}.", template]))
    with pytest.raises(UserError) as exc:
        get_templates(str(path), "dtd")
    assert message in one_line(exc) and str(path) in one_line(exc)
    path.write_text(json.dumps(["a {{literal}} photo of a {}."]))
    assert get_templates(str(path), "dtd") == ["a {{literal}} photo of a {}."]


@pytest.mark.parametrize("encoding, message", [("latin-1", "is not UTF-8 text (byte 0xe9"),
                                               ("utf-16", "is UTF-16 text")])
def test_description_file_in_another_encoding_is_one_line(tmp_path, encoding, message):
    from fairclip.datasets.texts import load_descriptions

    path = tmp_path / "desc.json"
    path.write_bytes(json.dumps({"caf\u00e9": ["A photo of a caf\u00e9, a place."]}, ensure_ascii=False).encode(encoding))
    with pytest.raises(UserError) as exc:
        load_descriptions(str(path), ["caf\u00e9"])
    assert message in one_line(exc) and str(path) in one_line(exc)
    path.write_bytes(json.dumps({"caf\u00e9": ["x"]}, ensure_ascii=False).encode("utf-8-sig"))  # a BOM is fine
    assert load_descriptions(str(path), ["caf\u00e9"]) == [["x"]]


# --------------------------------------------------------------------------- trainer keys
@pytest.mark.parametrize("opts, message", [
    (("DATALOADER.TRAIN_X.BATCH_SIZE", "0"), "DATALOADER.TRAIN_X.BATCH_SIZE = 0 must be a whole number >= 1"),
    (("DATALOADER.TEST.BATCH_SIZE", "-4"), "DATALOADER.TEST.BATCH_SIZE = -4 must be a whole number >= 1"),
    (("DATALOADER.NUM_WORKERS", "-1"), "DATALOADER.NUM_WORKERS = -1 must be a whole number >= 0"),
    (("TRAINER.FAIR.CROP_MIN_FRAC", "0.9", "TRAINER.FAIR.CROP_MAX_FRAC", "0.5"),
     "CROP_MIN_FRAC=0.9 and CROP_MAX_FRAC=0.5 must satisfy 0 < MIN <= MAX <= 1"),
])
def test_bad_loader_and_crop_keys_are_one_line(mini_pets, tiny_clip, tmp_path, opts, message):
    from fairclip.toolbox import build_trainer

    with pytest.raises(UserError) as exc:
        build_trainer(small_fair_cfg(mini_pets, tiny_clip, str(tmp_path / "run"), *opts))
    assert message in one_line(exc)
