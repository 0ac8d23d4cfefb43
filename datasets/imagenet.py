"""ImageNet-1k: ``imagenet/{images/{train,val}/<wnid>/, classnames.txt}``; the official val set is the
test set (and the val split, as in CoOp). The file list is cached as JSON with relative paths
(``split_cache_ImageNet.json``) instead of CoOp's ``preprocessed.pkl``."""
import os.path as osp
from collections import OrderedDict

from fairclip.toolbox import DATASET_REGISTRY, DatasetBase, listdir_nohidden
from fairclip.toolbox.errors import UserError

from .common import (
    apply_fewshot, check_labels, check_nonempty, check_subsample, class_folders, dataset_root, inspect_splits,
    make_items, prepare_eval_splits, read_lines, read_split, relative_entries, require_dir, save_json_best_effort,
    section, subsample_classes,
)

CACHE_FILE = "split_cache_ImageNet.json"


@DATASET_REGISTRY.register()
class ImageNet(DatasetBase):
    dataset_dir = "imagenet"

    def __init__(self, cfg):
        subsample = check_subsample(cfg.DATASET.SUBSAMPLE_CLASSES)
        root = dataset_root(cfg)
        self.dataset_dir = require_dir(osp.join(root, type(self).dataset_dir), "ImageNet", "dataset folder")
        self.image_dir = require_dir(osp.join(self.dataset_dir, "images"), "ImageNet", "image folder")
        self.cache_path = osp.join(self.dataset_dir, CACHE_FILE)

        if osp.isfile(self.cache_path):
            train, test = read_split(self.cache_path, self.image_dir, splits=("train", "test"))
        else:
            train, test = self.scan()
        train, _ = apply_fewshot(cfg, self.dataset_dir, train, None)
        train, test = subsample_classes(train, test, subsample=subsample)
        _, test, self.skipped_unreadable = prepare_eval_splits(cfg, test, test, self.cache_path)
        self.data_checks = inspect_splits(OrderedDict([("train", train), ("test", test)]), self.cache_path)
        super().__init__(train_x=train, val=test, test=test)

    def read_classnames(self):
        """``classnames.txt``: ``<wnid> <class name>`` per line -> ordered {wnid: name}."""
        path = osp.join(self.dataset_dir, "classnames.txt")
        names = OrderedDict()
        for lineno, line in enumerate(read_lines(path, "ImageNet"), 1):
            wnid, _, name = line.partition(" ")
            if not name.strip():
                raise UserError("{} line {}: expected '<wnid> <class name>', got {!r}".format(path, lineno, line))
            names[wnid] = name.strip()
        return names

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
                entries += [(osp.join(folder, f), labels[wnid], names[wnid]) for f in sorted(listdir_nohidden(folder))]
            splits[split_name] = make_items(entries, "ImageNet images", hint)
        check_nonempty(splits, "ImageNet", hint)
        check_labels(splits, "ImageNet", hint)
        data = {name: relative_entries(items, self.image_dir) for name, items in splits.items()}
        save_json_best_effort(data, self.cache_path, "ImageNet file list")
        return splits["train"], splits["test"]
