"""ImageNet-1k: ``imagenet/{images/{train,val}/<wnid>/, classnames.txt}``; the official val set is the
test set (and the val split, as in CoOp). The file list is cached as JSON with relative paths
(``split_cache_ImageNet.json``) instead of CoOp's ``preprocessed.pkl``.

As in CoOp, labels follow the sorted wnid folders but the images of a folder keep ``os.listdir`` order
(not sorted): Dassl's few-shot sampler picks by position, so this order decides which images a K-shot
subset holds. ``os.listdir`` order depends on the filesystem (on ext4 it follows a per-filesystem hash),
so the same images on another disk can give another subset, in CoOp as here; the cache fixes the order
of the first scan. A cache written by an older version (sorted order, no ``file_order`` field) is
rescanned."""
import os.path as osp
from collections import OrderedDict

from fairclip.toolbox import DATASET_REGISTRY, DatasetBase, listdir_nohidden
from fairclip.toolbox.errors import UserError

from .common import (
    apply_fewshot, check_labels, check_nonempty, check_subsample, class_folders, dataset_root, inspect_splits,
    load_json, make_items, prepare_eval_splits, read_lines, read_split, relative_entries, require_dir,
    save_json_best_effort, section, subsample_classes,
)

CACHE_FILE = "split_cache_ImageNet.json"
FILE_ORDER = "os.listdir"  # recorded in the cache: the order of the images inside each class folder


def read_classnames(path, name):
    """``classnames.txt``: ``<wnid> <class name>`` per line -> ordered {wnid: name} (``name``: the reader,
    for the error messages)."""
    names = OrderedDict()
    for lineno, line in enumerate(read_lines(path, name), 1):
        wnid, _, classname = line.partition(" ")
        if not classname.strip():
            raise UserError("{} line {}: expected '<wnid> <class name>', got {!r}".format(path, lineno, line))
        names[wnid] = classname.strip()
    return names


@DATASET_REGISTRY.register()
class ImageNet(DatasetBase):
    dataset_dir = "imagenet"

    def __init__(self, cfg):
        subsample = check_subsample(cfg.DATASET.SUBSAMPLE_CLASSES)
        root = dataset_root(cfg)
        self.dataset_dir = require_dir(osp.join(root, type(self).dataset_dir), "ImageNet", "dataset folder")
        self.image_dir = require_dir(osp.join(self.dataset_dir, "images"), "ImageNet", "image folder")
        self.cache_path = osp.join(self.dataset_dir, CACHE_FILE)

        cached = load_json(self.cache_path, "ImageNet file list") if osp.isfile(self.cache_path) else None
        if isinstance(cached, dict) and cached.get("file_order") == FILE_ORDER:
            train, test = read_split(self.cache_path, self.image_dir, splits=("train", "test"), data=cached)
        else:
            if cached is not None:
                print("ImageNet: {} lists the images in another order; rescanning".format(self.cache_path))
            train, test = self.scan()
        train, _ = apply_fewshot(cfg, self.dataset_dir, train, None)
        train, test = subsample_classes(train, test, subsample=subsample)
        _, test, self.skipped_unreadable = prepare_eval_splits(cfg, test, test, self.cache_path)
        self.data_checks = inspect_splits(OrderedDict([("train", train), ("test", test)]), self.cache_path)
        super().__init__(train_x=train, val=test, test=test)

    def read_classnames(self):
        return read_classnames(osp.join(self.dataset_dir, "classnames.txt"), "ImageNet")

    def scan(self):
        names = self.read_classnames()
        train_dir = osp.join(self.image_dir, "train")
        folders = class_folders(train_dir, "ImageNet")
        unknown = [f for f in folders if f not in names]
        if unknown:
            raise UserError("ImageNet: {} folder(s) of {} are not in classnames.txt (first: {}); use CoOp's "
                            "classnames.txt ({})".format(len(unknown), train_dir, unknown[0], section("ImageNet")))
        labels = {wnid: i for i, wnid in enumerate(folders)}
        val_dir = osp.join(self.image_dir, "val")
        extra = [f for f in class_folders(val_dir, "ImageNet") if f not in labels]
        if extra:
            raise UserError("ImageNet: {} has class folder {} that images/train lacks; sort the val images into "
                            "the same wnid folders as train ({})".format(val_dir, extra[0], section("ImageNet")))
        hint = "check that the dataset is complete ({})".format(section("ImageNet"))
        splits = OrderedDict()
        for split_name, split_dir in (("train", train_dir), ("test", val_dir)):
            entries = []
            for wnid in class_folders(split_dir, "ImageNet"):
                folder = osp.join(split_dir, wnid)
                # os.listdir order, as CoOp (see the module docstring)
                entries += [(osp.join(folder, f), labels[wnid], names[wnid]) for f in listdir_nohidden(folder)]
            splits[split_name] = make_items(entries, "ImageNet images", hint)
        check_nonempty(splits, "ImageNet", hint)
        check_labels(splits, "ImageNet", hint)
        data = {name: relative_entries(items, self.image_dir) for name, items in splits.items()}
        data["file_order"] = FILE_ORDER
        save_json_best_effort(data, self.cache_path, "ImageNet file list")
        return splits["train"], splits["test"]


class ImageNetTestSet(DatasetBase):
    """An evaluation-only ImageNet test set in CoOp's layout: ``<dataset_dir>/<image_subdir>/`` and a copy of
    ImageNet's ``classnames.txt``. Subclasses (one module each) set the folders and ``class_folders()``.

    Every image is the test split; as in CoOp it is also ``train_x`` (Dassl derives the class list from
    it) and, as for our ImageNet, the val split. ``EVAL_ONLY``: our trainers refuse to train on it (adapt
    on ImageNet, then test here with ``--eval-only --model-dir``). ``DATASET.NUM_SHOTS`` is ignored (it
    sizes the ImageNet training run whose config is reused) and ``DATASET.SUBSAMPLE_CLASSES`` must be
    ``all``. Labels follow the class folders (``class_folders()``), names come from ``classnames.txt``;
    images keep ``os.listdir`` order, as in CoOp.
    """

    EVAL_ONLY = True
    dataset_dir = ""
    image_subdir = ""

    def __init__(self, cfg):
        if check_subsample(cfg.DATASET.SUBSAMPLE_CLASSES) != "all":
            raise UserError("{} is an evaluation-only test set: DATASET.SUBSAMPLE_CLASSES must be 'all', got {!r}".format(
                self.name, cfg.DATASET.SUBSAMPLE_CLASSES))
        root = dataset_root(cfg)
        self.dataset_dir = require_dir(osp.join(root, type(self).dataset_dir), self.name, "dataset folder")
        self.image_dir = require_dir(osp.join(self.dataset_dir, type(self).image_subdir), self.name, "image folder")
        names = read_classnames(osp.join(self.dataset_dir, "classnames.txt"), self.name)
        hint = "check that the dataset is complete ({})".format(section(self.name))
        entries = []
        for label, (folder, wnid) in enumerate(self.class_folders(names)):
            if wnid not in names:
                raise UserError("{}: class folder {} is not in {} (copy ImageNet's classnames.txt there, {})".format(
                    self.name, osp.join(self.image_dir, folder), osp.join(self.dataset_dir, "classnames.txt"),
                    section(self.name)))
            folder_dir = require_dir(osp.join(self.image_dir, folder), self.name, "class folder")
            entries += [(osp.join(folder_dir, f), label, names[wnid]) for f in listdir_nohidden(folder_dir)]
        items = make_items(entries, "{} images".format(self.name), hint)
        check_nonempty({"test": items}, self.name, hint)
        _, items, self.skipped_unreadable = prepare_eval_splits(cfg, items, items, self.image_dir)
        self.data_checks = inspect_splits(OrderedDict([("test", items)]), self.image_dir)
        super().__init__(train_x=items, val=items, test=items)

    @property
    def name(self):
        return type(self).__name__

    def class_folders(self, names):
        """``[(folder, wnid)]`` in label order; by default the sorted wnid folders of the image folder."""
        return [(f, f) for f in class_folders(self.image_dir, self.name)]  # folders only (README.txt is skipped)
