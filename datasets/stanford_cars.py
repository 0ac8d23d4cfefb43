"""Stanford Cars (196 models). Split paths are relative to the dataset folder itself
(``cars_train/00001.jpg``), unlike every other CoOp split file."""
import os.path as osp

from scipy.io import loadmat

from fairclip.toolbox import DATASET_REGISTRY
from fairclip.toolbox.errors import UserError

from .common import SplitJsonDataset, require_file, split_trainval


def year_first(meta_name):
    """``AM General Hummer SUV 2000`` -> ``2000 AM General Hummer SUV`` (CoOp's class names)."""
    words = meta_name.split(" ")
    return " ".join([words[-1]] + words[:-1])


@DATASET_REGISTRY.register()
class StanfordCars(SplitJsonDataset):
    dataset_dir = "stanford_cars"
    image_subdir = ""  # prefix = dataset folder
    split_file = "split_zhou_StanfordCars.json"

    def build_split(self):
        meta = self.load_mat(osp.join(self.dataset_dir, "devkit", "cars_meta.mat"), "class_names")[0]
        classnames = [year_first(str(entry[0])) for entry in meta]
        trainval = self.read_annos("cars_train", osp.join(self.dataset_dir, "devkit", "cars_train_annos.mat"), classnames)
        test = self.read_annos("cars_test", osp.join(self.dataset_dir, "cars_test_annos_withlabels.mat"), classnames)
        train, val = split_trainval(trainval, self.name, p_val=0.2)
        return train, val, test

    def load_mat(self, path, key):
        require_file(path, self.name, "annotation file")
        try:
            data = loadmat(path)
        except (ValueError, OSError, TypeError) as exc:
            raise UserError("{} cannot be read as a MATLAB file ({}); re-download it".format(path, exc)) from None
        if key not in data:
            raise UserError("{} has no '{}' variable; is it the right file? re-download it".format(path, key))
        return data[key]

    def read_annos(self, image_folder, path, classnames):
        annos = self.load_mat(path, "annotations")[0]
        entries = []
        for anno in annos:
            try:
                fname = str(anno["fname"][0])
                label = int(anno["class"][0, 0]) - 1  # 1-based in the .mat files
            except (ValueError, IndexError) as exc:
                raise UserError("{}: an annotation lacks 'fname'/'class' ({}); use the *_withlabels test file "
                                "and the devkit from {}".format(path, exc, "DATASETS.md")) from None
            if not 0 <= label < len(classnames):
                raise UserError("{}: class {} of {} is outside the {} classes of cars_meta.mat; re-download "
                                "the devkit".format(path, label + 1, fname, len(classnames)))
            entries.append((osp.join(self.dataset_dir, image_folder, fname), label, classnames[label]))
        return entries
