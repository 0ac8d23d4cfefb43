"""SUN397 (397 scenes): ``sun397/{SUN397/<letter>/<scene>[/<sub>]/, ClassName.txt, Training_01.txt,
Testing_01.txt}``."""
import os.path as osp

from fairclip.toolbox import DATASET_REGISTRY
from fairclip.toolbox.errors import UserError

from .common import SplitJsonDataset, read_lines, split_trainval


def scene_to_classname(scene):
    """``a/apartment_building/outdoor`` -> ``outdoor apartment_building`` (letter level dropped,
    the rest reversed, as in CoOp)."""
    return " ".join(scene.split("/")[1:][::-1])


@DATASET_REGISTRY.register()
class SUN397(SplitJsonDataset):
    dataset_dir = "sun397"
    image_subdir = "SUN397"
    split_file = "split_zhou_SUN397.json"

    def build_split(self):
        scenes = [line.lstrip("/") for line in read_lines(osp.join(self.dataset_dir, "ClassName.txt"), self.name)]
        cname2lab = {scene: i for i, scene in enumerate(scenes)}
        trainval = self.read_list("Training_01.txt", cname2lab)
        test = self.read_list("Testing_01.txt", cname2lab)
        train, val = split_trainval(trainval, self.name, p_val=0.2)
        return train, val, test

    def read_list(self, filename, cname2lab):
        path = osp.join(self.dataset_dir, filename)
        entries = []
        for lineno, line in enumerate(read_lines(path, self.name), 1):
            imname = line.lstrip("/")
            scene = osp.dirname(imname)
            if scene not in cname2lab:
                raise UserError("{} line {}: scene {!r} is not in ClassName.txt; use the files of the same "
                                "Partitions.zip".format(path, lineno, scene))
            entries.append((osp.join(self.image_dir, imname), cname2lab[scene], scene_to_classname(scene)))
        return entries
