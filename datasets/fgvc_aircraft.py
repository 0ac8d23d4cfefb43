"""FGVC-Aircraft 2013b (100 variants): the official ``images_variant_{train,val,test}.txt`` lists are
the split (no JSON file, as in CoOp)."""
import os.path as osp
from collections import OrderedDict

from fairclip.toolbox import DATASET_REGISTRY
from fairclip.toolbox.errors import UserError

from .common import SPLIT_NAMES, SplitJsonDataset, check_labels, check_nonempty, make_items, read_lines, require_dir


@DATASET_REGISTRY.register()
class FGVCAircraft(SplitJsonDataset):
    dataset_dir = "fgvc_aircraft"  # the data/ folder of fgvc-aircraft-2013b, renamed
    image_subdir = "images"
    split_file = ""

    def load_split(self):
        require_dir(self.image_dir, self.name, "image folder")
        variants = read_lines(osp.join(self.dataset_dir, "variants.txt"), self.name)
        cname2lab = {name: i for i, name in enumerate(variants)}
        hint = "check that the dataset is complete (the data/ folder of fgvc-aircraft-2013b)"
        splits = OrderedDict()
        for split_name in SPLIT_NAMES:
            path = osp.join(self.dataset_dir, "images_variant_{}.txt".format(split_name))
            splits[split_name] = make_items(self.read_list(path, cname2lab), path, hint)
        check_nonempty(splits, "{} split lists".format(self.name), hint)
        check_labels(splits, "{} split lists".format(self.name), hint)
        return tuple(splits.values())

    def read_list(self, path, cname2lab):
        # Lines: "<image id> <variant name, may contain spaces>"
        entries = []
        for lineno, line in enumerate(read_lines(path, self.name), 1):
            parts = line.split(" ")
            variant = " ".join(parts[1:])
            if variant not in cname2lab:
                raise UserError("{} line {}: variant {!r} is not in variants.txt; re-extract the dataset".format(
                    path, lineno, variant))
            entries.append((osp.join(self.image_dir, parts[0] + ".jpg"), cname2lab[variant], variant))
        return entries
