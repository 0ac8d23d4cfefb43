"""UCF101 middle frames (101 actions): ``ucf101/{UCF-101-midframes/<Action_Name>/, ucfTrainTestlist/}``."""
import os.path as osp
import re

from fairclip.toolbox import DATASET_REGISTRY
from fairclip.toolbox.errors import UserError

from .common import SplitJsonDataset, read_lines, split_trainval


def action_to_classname(action):
    """``ApplyEyeMakeup`` -> ``Apply_Eye_Makeup`` (the midframes folder name and CoOp's class name)."""
    return "_".join(re.findall("[A-Z][^A-Z]*", action))


@DATASET_REGISTRY.register()
class UCF101(SplitJsonDataset):
    dataset_dir = "ucf101"
    image_subdir = "UCF-101-midframes"
    split_file = "split_zhou_UCF101.json"

    def build_split(self):
        lists = osp.join(self.dataset_dir, "ucfTrainTestlist")
        cname2lab = {}
        class_file = osp.join(lists, "classInd.txt")
        for lineno, line in enumerate(read_lines(class_file, self.name), 1):
            parts = line.split()
            if len(parts) != 2 or not parts[0].isdigit():
                raise UserError("{} line {}: expected '<id> <Action>', got {!r}".format(class_file, lineno, line))
            cname2lab[parts[1]] = int(parts[0]) - 1
        trainval = self.read_list(osp.join(lists, "trainlist01.txt"), cname2lab)
        test = self.read_list(osp.join(lists, "testlist01.txt"), cname2lab)
        train, val = split_trainval(trainval, self.name, p_val=0.2)
        return train, val, test

    def read_list(self, path, cname2lab):
        # Lines: "Action/v_Action_gXX_cYY.avi [label]"; the frame is Action_Name/v_..._cYY.jpg
        entries = []
        for lineno, line in enumerate(read_lines(path, self.name), 1):
            video = line.split()[0]
            action, _, filename = video.partition("/")
            if action not in cname2lab or not filename:
                raise UserError("{} line {}: {!r} does not start with an action of classInd.txt".format(
                    path, lineno, line))
            classname = action_to_classname(action)
            impath = osp.join(self.image_dir, classname, osp.splitext(filename)[0] + ".jpg")
            entries.append((impath, cname2lab[action], classname))
        return entries
