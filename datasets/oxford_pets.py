"""Oxford-IIIT Pets (37 breeds): ``oxford_pets/{images/, annotations/{trainval,test}.txt}``."""
import os.path as osp

from fairclip.toolbox import DATASET_REGISTRY
from fairclip.toolbox.errors import UserError

from .common import SplitJsonDataset, read_lines, split_trainval


def breed_from_image_name(imname):
    """``american_bulldog_12`` / ``Abyssinian_100`` -> ``american_bulldog`` / ``abyssinian``."""
    return "_".join(imname.split("_")[:-1]).lower()


@DATASET_REGISTRY.register()
class OxfordPets(SplitJsonDataset):
    dataset_dir = "oxford_pets"
    image_subdir = "images"
    split_file = "split_zhou_OxfordPets.json"

    def build_split(self):
        trainval = self.read_list("trainval.txt")
        test = self.read_list("test.txt")
        train, val = split_trainval(trainval, self.name, p_val=0.2)
        return train, val, test

    def read_list(self, filename):
        # Lines: "<image name> <class id, 1-based> <species> <breed id>"; '#' lines are comments.
        path = osp.join(self.dataset_dir, "annotations", filename)
        entries = []
        for lineno, line in enumerate(read_lines(path, self.name), 1):
            if line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 4 or not parts[1].isdigit() or int(parts[1]) < 1:
                raise UserError("{} line {}: expected '<image> <class id> <species> <breed id>', got {!r}; "
                                "re-download the annotations".format(path, lineno, line))
            imname = parts[0]
            entries.append((osp.join(self.image_dir, imname + ".jpg"), int(parts[1]) - 1, breed_from_image_name(imname)))
        return entries
