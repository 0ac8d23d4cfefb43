"""CUB-200-2011 (200 bird species): ``cub/CUB_200_2011/{images/<NNN.Name>/, images.txt,
image_class_labels.txt, train_test_split.txt, classes.txt}``.

CoOp has no split for CUB; ours (``split_zhou_CUB200.json``, built on first use): the official test
images are the test split, and a seeded 20% of each class's official training images the val split.
"""
import os.path as osp
import re

from fairclip.toolbox import DATASET_REGISTRY
from fairclip.toolbox.errors import UserError

from .common import SplitJsonDataset, read_lines, split_trainval


def folder_to_classname(folder):
    """``001.Black_footed_Albatross`` -> ``Black_footed_Albatross``."""
    return re.sub(r"^\d+\.", "", folder)


@DATASET_REGISTRY.register()
class CUB200(SplitJsonDataset):
    dataset_dir = "cub"
    image_subdir = "CUB_200_2011/images"
    split_file = "split_zhou_CUB200.json"

    def build_split(self):
        base = osp.join(self.dataset_dir, "CUB_200_2011")
        classes = self.id_table(osp.join(base, "classes.txt"))
        images = self.id_table(osp.join(base, "images.txt"))
        labels = self.id_table(osp.join(base, "image_class_labels.txt"))
        is_train = self.id_table(osp.join(base, "train_test_split.txt"))
        trainval, test = [], []
        for image_id, relpath in images.items():
            if image_id not in labels or image_id not in is_train:
                raise UserError("CUB200: image id {} of images.txt is missing from image_class_labels.txt or "
                                "train_test_split.txt; re-extract CUB_200_2011".format(image_id))
            class_id = labels[image_id]
            if class_id not in classes:
                raise UserError("CUB200: class id {} (image {}) is not in classes.txt; re-extract CUB_200_2011".format(
                    class_id, image_id))
            entry = (osp.join(self.image_dir, relpath), int(class_id) - 1, folder_to_classname(classes[class_id]))
            (trainval if is_train[image_id] == "1" else test).append(entry)
        train, val = split_trainval(trainval, self.name, p_val=0.2)
        return train, val, test

    def id_table(self, path):
        """``<id> <value>`` lines -> {id: value}."""
        table = {}
        for lineno, line in enumerate(read_lines(path, self.name), 1):
            key, _, value = line.partition(" ")
            if not key.isdigit() or not value:
                raise UserError("{} line {}: expected '<id> <value>', got {!r}; re-extract CUB_200_2011".format(
                    path, lineno, line))
            table[key] = value.strip()
        return table
