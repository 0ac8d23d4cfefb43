"""Shared reader code: split JSON files, our seeded splits, few-shot cache, unreadable-image policy.

Every reader follows the CoOp pattern (see ``DATASETS.md``): read ``split_zhou_<Name>.json`` when it
exists, else build the split from the official annotations and save it in the same format. What
differs from CoOp, on purpose:

* splits we build ourselves are seeded explicitly (``SPLIT_SEED``), never by the global RNG state,
  and image lists are sorted first, so the same files always give the same split;
* few-shot subsets are drawn exactly as CoOp draws them (Dassl's rule, :func:`sample_per_class`) but
  cached as JSON with paths relative to the dataset folder, in ``<dataset_dir>/split_fewshot_json/``
  (CoOp's ``split_fewshot/*.pkl`` pickles are left alone);
* bad input (missing root/folder/file, empty split, stale split entry) is a one-line ``UserError``.
"""
import json
import math
import os
import os.path as osp
import random
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image

from fairclip.toolbox import DatasetBase, DatasetWrapper, Datum, listdir_nohidden
from fairclip.toolbox.errors import UserError
from fairclip.toolbox.io import atomic_write_json

SPLIT_SEED = 1  # seed of every split we build (fallbacks and our CUB200/RESISC45/Birdsnap splits)
FEWSHOT_DIRNAME = "split_fewshot_json"  # not CoOp's "split_fewshot": the two caches never collide
# The rule a few-shot cache was drawn by (recorded in it; a cache without it is drawn again).
FEWSHOT_SAMPLER = "dassl: labels in first-appearance order, random.Random(SEED).sample per label, train then val"
SPLIT_NAMES = ("train", "val", "test")
SUBSAMPLE_KEY = "DATASET.SUBSAMPLE_CLASSES"
DOC = "DATASETS.md"

# Errors PIL raises for a file it cannot decode (UnidentifiedImageError and truncation are OSErrors).
UNREADABLE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


# --------------------------------------------------------------------------- missing-file collection
_missing = None  # a list while tools.verify_datasets collects missing images instead of failing


@contextmanager
def collect_missing_images():
    """Inside this block readers record missing image files (``(source, path)``) instead of raising,
    and write no split or cache file (a split built from incomplete data must not be saved)."""
    global _missing
    previous, _missing = _missing, []
    try:
        yield _missing
    finally:
        _missing = previous


def writes_allowed():
    return _missing is None


# --------------------------------------------------------------------------- paths
def section(name):
    return "the {} section of {}".format(name, DOC)


def root_hint():
    """How to give the dataset root: ``--root``, or the variable a script passes as ``--root`` (the scripts
    export ``FAIRCLIP_ROOT_VAR=DATA``)."""
    var = os.environ.get("FAIRCLIP_ROOT_VAR", "").strip()
    if var:
        return "set {} to it (the script passes {} to train.py as --root)".format(var, var)
    return "pass it with --root"


def dataset_root(cfg):
    """``DATASET.ROOT`` as an absolute path; a clear error when unset or missing."""
    root = str(cfg.DATASET.ROOT or "").strip()
    if not root:
        raise UserError(
            "DATASET.ROOT is empty; it must be the folder that holds one sub-folder per dataset: {} "
            "(see {})".format(root_hint(), DOC)
        )
    root = osp.abspath(osp.expanduser(root))
    if not osp.isdir(root):
        raise UserError(
            "dataset root {} does not exist; it must be the folder that holds the prepared datasets: {} "
            "(see {})".format(root, root_hint(), DOC)
        )
    return root


def require_dir(path, name, what="folder"):
    if not osp.isdir(path):
        raise UserError("{}: expected {} {} does not exist; prepare it as in {}".format(name, what, path, section(name)))
    return path


def require_file(path, name, what="file"):
    if not osp.isfile(path):
        raise UserError("{}: expected {} {} does not exist; prepare it as in {}".format(name, what, path, section(name)))
    return path


def read_lines(path, name):
    """Non-blank, stripped lines of an annotation file (which must exist)."""
    require_file(path, name, "annotation file")
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


# --------------------------------------------------------------------------- Datum lists
def make_items(entries, source, hint):
    """``(impath, label, classname)`` tuples -> ``Datum`` list. A missing image is a ``UserError``
    naming ``source`` (or is recorded, under :func:`collect_missing_images`)."""
    items = []
    for impath, label, classname in entries:
        if not osp.isfile(impath):
            if _missing is not None:
                _missing.append((source, impath))
                continue
            raise UserError("{}: image {} does not exist; {}".format(source, impath, hint))
        if isinstance(label, bool) or not isinstance(label, int):
            raise UserError("{}: label {!r} of image {} is not an integer; {}".format(source, label, impath, hint))
        items.append(Datum(impath=impath, label=label, classname=classname))
    return items


def check_nonempty(splits, source, hint):
    for split_name, items in splits.items():
        if not items:
            raise UserError("{}: the '{}' split is empty; {}".format(source, split_name, hint))


def check_labels(splits, source, hint):
    """The labels of a dataset are usable by a K-way classifier, or a one-line ``UserError`` naming ``source``:

    * every label is an integer and the labels used are exactly 0..K-1 (Dassl and our trainers size the
      classifier as max label + 1 and index class names by label, so a gap or a stray 99 misaligns them);
    * one class name per label and one label per class name (two labels with one name get identical
      text classifiers);
    * one label per image (the same file listed with two labels), within a split and across splits;
    * train covers every label (Dassl derives the class list from train)."""
    names, labels_of_name, label_of_path = {}, {}, {}
    for split_name, items in splits.items():
        for item in items:
            label = item.label
            if isinstance(label, bool) or not isinstance(label, int):
                raise UserError("{}: label {!r} of {} ('{}' split) is not an integer; {}".format(
                    source, label, item.impath, split_name, hint))
            known = names.setdefault(label, item.classname)
            if known != item.classname:
                raise UserError(
                    "{}: label {} is called both {!r} and {!r} ('{}' split); {}".format(
                        source, label, known, item.classname, split_name, hint
                    )
                )
            other = labels_of_name.setdefault(item.classname, label)
            if other != label:
                raise UserError(
                    "{}: class name {!r} has two labels, {} and {} ('{}' split); give each class one label and "
                    "one distinct name; {}".format(source, item.classname, other, label, split_name, hint)
                )
            seen = label_of_path.setdefault(item.impath, label)
            if seen != label:
                raise UserError(
                    "{}: image {} is listed with labels {} and {} ('{}' split); keep one; {}".format(
                        source, item.impath, seen, label, split_name, hint
                    )
                )
    check_contiguous(names, source, hint)
    in_train = {item.label for item in splits.get("train", [])}
    lacking = sorted(set(names) - in_train)
    if lacking:
        raise UserError(
            "{}: the train split has no image of {} class(es) (first: {!r}); {}".format(
                source, len(lacking), names[lacking[0]], hint
            )
        )


def check_contiguous(names, source, hint):
    """``names`` ({label: class name}) has exactly the labels 0..K-1."""
    k = len(names)
    stray = sorted(y for y in names if not 0 <= y < k)
    if stray:
        missing = sorted(set(range(k)) - set(names))
        raise UserError(
            "{}: labels must be 0..{} for {} classes, but class {!r} has label {} and label {} is unused; "
            "number the classes 0..{} in label order; {}".format(
                source, k - 1, k, names[stray[0]], stray[0], missing[0], k - 1, hint
            )
        )


def inspect_splits(splits, source):
    """Count what is legal but worth knowing, print one ``WARNING:`` line per finding and return the
    counts (results.json records them under ``protocol.data_checks``):

    * ``duplicates``: per split, entries whose image is listed earlier in the same split (each copy is
      read, and weighs, once more);
    * ``train_test_overlap``: test images that are also train images. This protocol adapts on the
      unlabelled train split, so such images are seen during adaptation before they are tested."""
    report = {"duplicates": {}, "train_test_overlap": 0}
    for split_name, items in splits.items():
        seen, dups = set(), []
        for item in items or ():
            if item.impath in seen:
                dups.append(item.impath)
            seen.add(item.impath)
        report["duplicates"][split_name] = len(dups)
        if dups:
            print("WARNING: {}: the '{}' split lists {} image(s) more than once (first: {}); each copy counts "
                  "again".format(source, split_name, len(dups), dups[0]))
    train, test = splits.get("train"), splits.get("test")
    if train and test:
        overlap = sorted({it.impath for it in train} & {it.impath for it in test})
        report["train_test_overlap"] = len(overlap)
        if overlap:
            print("WARNING: {}: {} test image(s) are also in the train split (first: {}); they are seen, "
                  "unlabelled, during adaptation before being tested".format(source, len(overlap), overlap[0]))
    return report


# --------------------------------------------------------------------------- split JSON files
STALE_HINT = (
    "check that DATASET.ROOT points at the complete prepared dataset (python -m tools.verify_datasets), "
    "or replace the stale split file"
)


def load_json(path, what):
    from .texts import read_text

    try:
        return json.loads(read_text(path, what))
    except json.JSONDecodeError as exc:
        raise UserError(
            "{} {} is not valid JSON (line {}, column {}: {}); delete or re-download it".format(
                what, path, exc.lineno, exc.colno, exc.msg
            )
        ) from None


def _entries(path, split_name, raw, prefix):
    """Validate the ``[relpath, label, classname]`` entries of one split and join them to ``prefix``."""
    if not isinstance(raw, list):
        raise UserError("split file {}: '{}' must be a list of [path, label, classname]".format(path, split_name))
    out = []
    for i, entry in enumerate(raw):
        ok = isinstance(entry, (list, tuple)) and len(entry) == 3 and isinstance(entry[0], str) and entry[0] != ""
        # Integers only: int(0.7) would silently move an image to class 0, and True is not a label.
        ok = ok and isinstance(entry[1], int) and not isinstance(entry[1], bool) and entry[1] >= 0
        if not ok:
            raise UserError(
                "split file {}: '{}' entry {} is {!r}, expected [relative path, integer label >= 0, classname]; "
                "replace the file".format(path, split_name, i, entry)
            )
        out.append((osp.join(prefix, entry[0]), entry[1], str(entry[2])))
    return out


def read_split(path, prefix, splits=SPLIT_NAMES, data=None):
    """Read a CoOp split file: ``{"train"|"val"|"test": [[relpath, label, classname], ...]}`` with
    paths relative to ``prefix``. Returns one ``Datum`` list per name in ``splits``. ``data``: the
    file's content when the caller has already parsed it."""
    print("Reading split from {}".format(path))
    if data is None:
        data = load_json(path, "split file")
    if not isinstance(data, dict) or any(s not in data for s in splits):
        raise UserError(
            "split file {} must be a JSON object with the keys {}; replace the file".format(path, ", ".join(splits))
        )
    out = OrderedDict()
    for split_name in splits:
        entries = _entries(path, split_name, data[split_name], prefix)
        out[split_name] = make_items(
            entries, "split file {} ('{}' entry)".format(path, split_name), STALE_HINT
        )
    empty_hint = "re-download it (python -m tools.fetch_splits) or delete it so that the reader rebuilds it"
    if _missing is None:
        check_nonempty(out, "split file {}".format(path), empty_hint)
    check_labels(out, "split file {}".format(path), "replace the split file")
    return tuple(out.values())


def relative_entries(items, prefix):
    """``[path, label, classname]`` entries with paths relative to ``prefix``. An image outside ``prefix``
    (a split file may name absolute paths) keeps its absolute path: joining it to ``prefix`` on reading
    gives it back unchanged."""
    out = []
    for item in items:
        rel = osp.relpath(item.impath, prefix)
        if rel == ".." or rel.startswith(".." + os.sep) or osp.isabs(rel):
            rel = osp.abspath(item.impath)
        out.append([rel.replace(os.sep, "/"), int(item.label), item.classname])
    return out


def save_json_best_effort(obj, path, what):
    """Atomic write; a read-only dataset folder only costs a warning (the content is deterministic
    or a cache, so it can be rebuilt)."""
    if not writes_allowed():
        return False
    try:
        atomic_write_json(obj, path)
    except OSError as exc:
        warnings.warn("could not save the {} to {} ({}); it will be rebuilt on every run".format(what, path, exc))
        return False
    print("Saved {} to {}".format(what, path))
    return True


def save_split(train, val, test, path, prefix):
    split = {name: relative_entries(items, prefix) for name, items in zip(SPLIT_NAMES, (train, val, test))}
    return save_json_best_effort(split, path, "split")


# --------------------------------------------------------------------------- our seeded splits
def _too_small(name, classname, n, need):
    return UserError(
        "{}: class {!r} has {} image(s), too few for a train/val/test split (needs at least {}); "
        "check that the dataset is complete ({})".format(name, classname, n, need, section(name))
    )


def split_per_class(entries, name, p_trn=0.5, p_val=0.2, seed=SPLIT_SEED):
    """Split ``(impath, label, classname)`` entries per class into train/val/test fractions.

    Classes are visited in label order and each class's list is sorted before a shuffle by a
    ``random.Random(seed)``, so the result depends only on the file list and the seed."""
    rng = random.Random(seed)
    train, val, test = [], [], []
    for label, group in _by_label(entries).items():
        group = sorted(group)
        rng.shuffle(group)
        n = len(group)
        n_trn, n_val = round(n * p_trn), round(n * p_val)
        if n_trn < 1 or n_val < 1 or n - n_trn - n_val < 1:
            raise _too_small(name, group[0][2], n, 3)
        train += group[:n_trn]
        val += group[n_trn:n_trn + n_val]
        test += group[n_trn + n_val:]
    return train, val, test


def split_trainval(entries, name, p_val=0.2, seed=SPLIT_SEED):
    """Carve a per-class validation set (``round(n * p_val)`` images) out of official training entries."""
    rng = random.Random(seed)
    train, val = [], []
    for label, group in _by_label(entries).items():
        group = sorted(group)
        rng.shuffle(group)
        n_val = round(len(group) * p_val)
        if n_val < 1 or len(group) - n_val < 1:
            raise _too_small(name, group[0][2], len(group), 3)
        val += group[:n_val]
        train += group[n_val:]
    return train, val


def _by_label(entries):
    groups = {}
    for entry in entries:
        groups.setdefault(int(entry[1]), []).append(tuple(entry))
    return OrderedDict(sorted(groups.items()))


def class_folders(image_dir, name, ignored=()):
    """Sorted, non-hidden sub-folders of ``image_dir`` minus ``ignored``; an error when none."""
    require_dir(image_dir, name, "image folder")
    folders = sorted(
        f for f in listdir_nohidden(image_dir) if f not in ignored and osp.isdir(osp.join(image_dir, f))
    )
    if not folders:
        raise UserError("{}: image folder {} has no class sub-folders; prepare it as in {}".format(
            name, image_dir, section(name)))
    return folders


def folder_entries(image_dir, name, ignored=(), new_cnames=None):
    """``(impath, label, classname)`` for a folder-per-class tree; labels follow the sorted folder
    names, class names are the folder names (renamed by ``new_cnames`` where given)."""
    entries = []
    for label, folder in enumerate(class_folders(image_dir, name, ignored)):
        classname = (new_cnames or {}).get(folder, folder)
        folder_dir = osp.join(image_dir, folder)
        files = sorted(f for f in listdir_nohidden(folder_dir) if osp.isfile(osp.join(folder_dir, f)))
        if not files:
            raise UserError("{}: class folder {} is empty; re-extract the dataset ({})".format(
                name, folder_dir, section(name)))
        entries += [(osp.join(folder_dir, f), label, classname) for f in files]
    return entries


# --------------------------------------------------------------------------- base-to-new subsampling
def check_subsample(subsample):
    if subsample not in ("all", "base", "new"):
        raise UserError("{} = {!r} is not one of all, base, new".format(SUBSAMPLE_KEY, subsample))
    return subsample


def subsample_classes(*splits, subsample="all"):
    """CoOp's base-to-new protocol: "all" keeps everything; "base"/"new" keep the first/second half
    (ceil(n/2)) of the sorted train labels and relabel them from 0."""
    if check_subsample(subsample) == "all":
        return splits
    labels = sorted({item.label for item in splits[0]})
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabel = {y: i for i, y in enumerate(selected)}
    print("Subsampling the {} classes ({} of {})".format(subsample, len(selected), len(labels)))
    return tuple(
        [Datum(impath=it.impath, label=relabel[it.label], classname=it.classname)
         for it in items if it.label in relabel]
        for items in splits
    )


# --------------------------------------------------------------------------- few-shot cache
def fewshot_cache_path(dataset_dir, num_shots, seed):
    return osp.join(dataset_dir, FEWSHOT_DIRNAME, "shot_{}-seed_{}.json".format(num_shots, seed))


def sample_per_class(items, num_shots, rng):
    """Dassl's few-shot rule (``DatasetBase.generate_fewshot_dataset``), so that CoOp's few-shot subsets
    come out identical: labels are visited in the order they first appear in ``items`` (not sorted);
    each label's items keep their list order and ``rng.sample(items, num_shots)`` picks from them, or
    all of them are kept when the label has fewer. One generator serves every label in turn."""
    groups = {}  # insertion order = first appearance
    for item in items:
        groups.setdefault(item.label, []).append(item)
    out = []
    for group in groups.values():
        out += rng.sample(group, num_shots) if len(group) >= num_shots else group
    return out


def apply_fewshot(cfg, dataset_dir, train, val=None):
    """Replace train (and val, with min(K, 4) shots) by a K-shot subset when ``DATASET.NUM_SHOTS`` >= 1.

    The subset is drawn as CoOp draws it: ``random.Random(SEED)`` (the state Dassl's ``set_random_seed``
    leaves the global generator in when a CoOp reader samples) walks train, then val, with
    :func:`sample_per_class`. It is cached in ``<dataset_dir>/split_fewshot_json/shot_<K>-seed_<SEED>.json``
    (paths relative to the dataset folder); a cache drawn by another rule (an older version of this
    toolbox sorted the labels) is drawn again. A negative SEED draws a fresh subset each run and caches
    nothing."""
    num_shots = int(cfg.DATASET.NUM_SHOTS)
    if num_shots < 1:
        return train, val
    seed = int(cfg.SEED)
    path = fewshot_cache_path(dataset_dir, num_shots, seed)
    if seed >= 0 and osp.isfile(path):
        data = load_json(path, "few-shot cache")
        if isinstance(data, dict) and data.get("sampler") == FEWSHOT_SAMPLER:
            return _read_fewshot(path, data, dataset_dir, train, val)
        print("The few-shot cache {} was drawn by another rule; drawing it again".format(path))

    rng = random.Random(seed) if seed >= 0 else random.Random()
    print("Creating a {}-shot subset (seed {})".format(num_shots, seed))
    train = sample_per_class(train, num_shots, rng)
    if val:
        val = sample_per_class(val, min(num_shots, 4), rng)
    if seed >= 0:
        data = {"num_shots": num_shots, "seed": seed, "sampler": FEWSHOT_SAMPLER,
                "train": relative_entries(train, dataset_dir)}
        if val is not None:
            data["val"] = relative_entries(val, dataset_dir)
        save_json_best_effort(data, path, "few-shot subset")
    return train, val


def _read_fewshot(path, data, dataset_dir, train, val):
    print("Loading the few-shot subset from {}".format(path))
    stale = "delete {} so that it is drawn again from the current split".format(path)
    out = []
    for split_name, full in (("train", train), ("val", val)):
        if full is None:
            out.append(None)
            continue
        if not isinstance(data, dict) or split_name not in data:
            raise UserError("few-shot cache {} has no '{}' list; {}".format(path, split_name, stale))
        entries = _entries(path, split_name, data[split_name], dataset_dir)
        known = {(it.impath, it.label) for it in full}
        for impath, label, _ in entries:
            if (impath, label) not in known:
                raise UserError(
                    "few-shot cache {}: '{}' entry {} (label {}) is not in the current {} split; {}".format(
                        path, split_name, impath, label, split_name, stale
                    )
                )
        out.append(make_items(entries, "few-shot cache {}".format(path), stale))
    return out[0], out[1]


# --------------------------------------------------------------------------- reader base class
class SplitJsonDataset(DatasetBase):
    """The CoOp reader pattern. Subclasses set the class attributes and implement ``build_split``.

    * ``dataset_dir``: folder under ``DATASET.ROOT``;
    * ``image_subdir``: folder the split paths are relative to ("" = the dataset folder itself,
      as for StanfordCars);
    * ``split_file``: ``split_zhou_<Name>.json`` in the dataset folder.
    """

    dataset_dir = ""
    image_subdir = ""
    split_file = ""

    def __init__(self, cfg):
        name = type(self).__name__
        subsample = check_subsample(cfg.DATASET.SUBSAMPLE_CLASSES)  # before any heavy work
        root = dataset_root(cfg)
        self.dataset_dir = require_dir(osp.join(root, type(self).dataset_dir), name, "dataset folder")
        self.image_dir = osp.join(self.dataset_dir, self.image_subdir) if self.image_subdir else self.dataset_dir
        self.split_path = osp.join(self.dataset_dir, self.split_file) if self.split_file else ""

        train, val, test = self.load_split()
        train, val = apply_fewshot(cfg, self.dataset_dir, train, val)
        train, val, test = subsample_classes(train, val, test, subsample=subsample)
        source = self.split_path if osp.isfile(self.split_path or "") else "{} annotations".format(name)
        val, test, self.skipped_unreadable = prepare_eval_splits(cfg, val, test, source)
        self.data_checks = inspect_splits(OrderedDict([("train", train), ("val", val), ("test", test)]), source)
        super().__init__(train_x=train, val=val, test=test)

    @property
    def name(self):
        return type(self).__name__

    def load_split(self):
        if self.split_path and osp.isfile(self.split_path):
            require_dir(self.image_dir, self.name, "image folder")
            return read_split(self.split_path, self.image_dir)
        print("{}: {} not found, building the split from the official files".format(self.name, self.split_path))
        entries = self.build_split()
        hint = "check that the dataset is complete ({})".format(section(self.name))
        splits = OrderedDict(
            (split_name, make_items(part, "{} annotations".format(self.name), hint))
            for split_name, part in zip(SPLIT_NAMES, entries)
        )
        if _missing is None:
            check_nonempty(splits, "{} annotations".format(self.name), hint)
        check_labels(splits, "{} annotations".format(self.name), hint)
        if self.split_path:
            save_split(*splits.values(), self.split_path, self.image_dir)
        return tuple(splits.values())

    def build_split(self):
        """Return ``(train, val, test)`` lists of ``(impath, label, classname)`` built from the
        official annotations."""
        raise NotImplementedError


# --------------------------------------------------------------------------- unreadable images
SKIP_EVAL_KEY = "DATASET.SKIP_UNREADABLE_EVAL"


def open_rgb(path, draft_side=None):
    """``path`` decoded as an RGB ``PIL.Image`` (the one decoder of the PIL path and the decoded cache).

    Unlike ``Image.convert("RGB")`` alone, 16-bit grey images (mode ``I;16``/``I``, e.g. 16-bit PNGs) are
    scaled to 8 bits instead of clipped to white. ``draft_side``: let JPEG decode at a reduced scale that
    still covers this many pixels."""
    with Image.open(path) as img:
        if draft_side:
            img.draft("RGB", (draft_side, draft_side))
        if img.mode.startswith("I;16") or img.mode == "I":
            arr = np.asarray(img).astype(np.int64)
            if img.mode.startswith("I;16") or arr.max(initial=0) > 255:  # 16-bit range (0..65535)
                arr = (arr + 128) // 257
            return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L").convert("RGB")
        return img.convert("RGB")


class EvalSplit(list):
    """A val or test split (a list of ``Datum``) that knows its name. Readers return their val/test
    splits as ``EvalSplit`` so that the loaders apply the evaluation policy to them: an unreadable image
    is never replaced by another one (which would change the evaluation set silently)."""

    def __init__(self, items, split_name):
        super().__init__(items)
        self.split_name = split_name


def eval_split_name(items):
    """"val"/"test" for an ``EvalSplit``, else None (a train split, or any other list)."""
    return getattr(items, "split_name", None) if isinstance(items, EvalSplit) else None


def unreadable_eval_message(split_name, impath, reason):
    return (
        "{} image {} cannot be decoded ({}); the {} set is never changed silently: replace the file "
        "(python -m tools.verify_datasets --decode lists every unreadable image) or set {} True to leave "
        "unreadable {} images out (results.json then lists them)".format(
            split_name, impath, reason, split_name, SKIP_EVAL_KEY, split_name)
    )


def prepare_eval_splits(cfg, val, test, source):
    """Mark ``val``/``test`` as evaluation splits and apply the unreadable-image policy to them.

    By default an empty (0-byte) file, the one defect visible without decoding, is a one-line error now,
    before any training; other undecodable files fail when they are read. With
    ``DATASET.SKIP_UNREADABLE_EVAL`` True every image of both splits is decoded once here and the
    unreadable ones are left out, each printed with a ``WARNING:`` line. Returns ``(val, test, skipped)``,
    ``skipped`` = ``{"val": [paths], "test": [paths]}`` (what results.json records). ``val`` may be
    ``test`` itself (ImageNet): it stays one list."""
    skip = bool(cfg.DATASET.get("SKIP_UNREADABLE_EVAL", False))
    out, skipped = {}, {"val": [], "test": []}
    for split_name, items in (("test", test), ("val", val)):
        if items is None:
            out[split_name] = None
            continue
        if split_name == "val" and items is test:
            out["val"], skipped["val"] = out["test"], list(skipped["test"])
            continue
        if skip:
            bad = dict(scan_unreadable(items))
        else:
            bad = {it.impath: "empty file" for it in items if _is_empty(it.impath)}
            if bad:
                path = sorted(bad)[0]
                raise UserError("{}: {}".format(source, unreadable_eval_message(split_name, path, bad[path])))
        for path in sorted(bad):
            print("WARNING: {} image {} cannot be decoded ({}); left out of the {} set as {} asks".format(
                split_name, path, bad[path], split_name, SKIP_EVAL_KEY))
        kept = [it for it in items if it.impath not in bad]
        if bad and not kept:
            raise UserError("{}: none of the {} {} images can be decoded; re-download the dataset".format(
                source, len(items), split_name))
        out[split_name] = EvalSplit(kept, split_name)
        skipped[split_name] = sorted(bad)
    return out["val"], out["test"], skipped


def _is_empty(path):
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return False  # a missing file is reported by the reader itself


class UnreadableImageError(UserError):
    """An unreadable-image error raised while loading. A DataLoader worker re-raises it in the main
    process as ``<class>(<traceback text>)``; keep only our one-line message then."""

    def __init__(self, message):
        text = str(message)
        if text.startswith("Caught ") and "Traceback" in text:
            last = [line for line in text.strip().splitlines() if line.strip()][-1]
            marker = type(self).__name__ + ": "
            text = last.split(marker, 1)[1] if marker in last else last
        super().__init__(text)


class TooManyUnreadableImages(UnreadableImageError):
    """More unreadable train images than ``DATASET.MAX_UNREADABLE`` allows."""


class UnreadableEvalImage(UnreadableImageError):
    """An unreadable val/test image (the evaluation set is never altered silently)."""


class SkipUnreadableWrapper(DatasetWrapper):
    """``DatasetWrapper`` that survives train images PIL cannot decode, and refuses to alter val/test.

    Images are decoded by :func:`open_rgb` (16-bit grey images included) on both toolbox backends.
    In a train split a bad image is reported once (with its path), replaced by the next readable sample
    and counted; when the number of distinct bad images exceeds ``DATASET.MAX_UNREADABLE`` x
    ``len(data_source)`` the run stops with a one-line error. The flags live in shared memory, so
    DataLoader workers and later epochs see the same count. In an evaluation split (an
    :class:`EvalSplit`) a bad image is a one-line error naming it (see :func:`prepare_eval_splits` for
    the opt-in skip). Use: ``DataManager(cfg, dataset_wrapper=SkipUnreadableWrapper)``.
    """

    def __init__(self, cfg, data_source, transform=None, is_train=False):
        super().__init__(cfg, data_source, transform=transform, is_train=is_train)
        self.max_fraction = float(cfg.DATASET.MAX_UNREADABLE)
        if not 0.0 <= self.max_fraction <= 1.0:
            raise UserError("DATASET.MAX_UNREADABLE = {} must be a fraction in [0, 1]".format(cfg.DATASET.MAX_UNREADABLE))
        self.eval_split = eval_split_name(data_source)
        self._bad = torch.zeros(max(len(data_source), 1), dtype=torch.uint8).share_memory_()

    @property
    def num_unreadable(self):
        return int(self._bad.sum())

    def __getitem__(self, idx):
        n = len(self.data_source)
        if self.eval_split:
            try:
                return self._read(idx)
            except UNREADABLE_ERRORS as exc:
                raise UnreadableEvalImage(unreadable_eval_message(
                    self.eval_split, self.data_source[idx].impath, "{}: {}".format(type(exc).__name__, exc)))
        for step in range(n):
            j = (idx + step) % n
            if self._bad[j]:
                continue
            try:
                return self._read(j)
            except UNREADABLE_ERRORS as exc:
                self._mark_unreadable(j, exc)
        raise TooManyUnreadableImages("none of the {} images of this split can be decoded".format(n))

    def _read(self, idx):
        """The item dict of Dassl's ``DatasetWrapper`` (img, img2, ... per transform, K copies at train
        time when ``DATALOADER.K_TRANSFORMS`` > 1, img0 when ``RETURN_IMG0``), decoded by ``open_rgb``."""
        item = self.data_source[idx]
        output = {"label": item.label, "domain": item.domain, "impath": item.impath, "index": idx}
        img0 = open_rgb(item.impath)
        if self.transform is None:
            output["img"] = img0
        else:
            tfms = self.transform if isinstance(self.transform, (list, tuple)) else [self.transform]
            for i, tfm in enumerate(tfms):
                output["img" if i == 0 else "img{}".format(i + 1)] = self._transform_image(tfm, img0)
        if getattr(self, "return_img0", True):  # Dassl versions without the key always add img0
            output["img0"] = self.to_tensor(img0)
        return output

    def _mark_unreadable(self, j, exc):
        impath = self.data_source[j].impath
        self._bad[j] = 1
        count = self.num_unreadable
        n = len(self.data_source)
        warnings.warn("cannot decode image {} ({}: {}); using another sample instead".format(
            impath, type(exc).__name__, exc))
        if count > self.max_fraction * n:
            raise TooManyUnreadableImages(
                "{} of {} images cannot be decoded, more than DATASET.MAX_UNREADABLE = {} allows (last: {}); "
                "re-download them (python -m tools.verify_datasets --decode lists all) or raise "
                "DATASET.MAX_UNREADABLE".format(count, n, self.max_fraction, impath)
            )


def unreadable_reason(impath):
    """None if PIL decodes the image as the data pipeline does, else a short reason."""
    try:
        open_rgb(impath)
    except FileNotFoundError:
        return "missing"
    except UNREADABLE_ERRORS as exc:
        return "{}: {}".format(type(exc).__name__, exc)
    return None


def scan_unreadable(items, workers=4):
    """Decode every distinct image of ``items``; returns ``[(impath, reason)]`` for the bad ones."""
    paths = sorted({item.impath for item in items})
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        reasons = list(pool.map(unreadable_reason, paths))
    return [(p, r) for p, r in zip(paths, reasons) if r is not None]
