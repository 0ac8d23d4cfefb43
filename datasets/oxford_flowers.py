"""Oxford Flowers-102: ``oxford_flowers/{jpg/, imagelabels.mat, cat_to_name.json}``."""
import json
import os.path as osp

from scipy.io import loadmat

from fairclip.toolbox import DATASET_REGISTRY
from fairclip.toolbox.errors import UserError

from .common import SplitJsonDataset, require_file, split_per_class


@DATASET_REGISTRY.register()
class OxfordFlowers(SplitJsonDataset):
    dataset_dir = "oxford_flowers"
    image_subdir = "jpg"
    split_file = "split_zhou_OxfordFlowers.json"

    def build_split(self):
        label_file = require_file(osp.join(self.dataset_dir, "imagelabels.mat"), self.name, "label file")
        names_file = require_file(osp.join(self.dataset_dir, "cat_to_name.json"), self.name, "class-name file")
        try:
            labels = loadmat(label_file)["labels"][0]
        except (ValueError, OSError, KeyError, IndexError) as exc:
            raise UserError("{} is not the Flowers-102 label file ({}); re-download it".format(label_file, exc)) from None
        try:
            with open(names_file, encoding="utf-8") as f:
                lab2cname = json.load(f)
        except json.JSONDecodeError as exc:
            raise UserError("{} is not valid JSON ({}); re-download it".format(names_file, exc.msg)) from None
        entries = []
        for i, label in enumerate(labels):
            label = int(label)  # 1-based; image_00001.jpg is the first entry
            if str(label) not in lab2cname:
                raise UserError("{} has no name for class {}; re-download it".format(names_file, label))
            impath = osp.join(self.image_dir, "image_{:05d}.jpg".format(i + 1))
            entries.append((impath, label - 1, lab2cname[str(label)]))
        return split_per_class(entries, self.name, p_trn=0.5, p_val=0.2)
