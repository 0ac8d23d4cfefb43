"""Write miniature dataset trees in the exact on-disk layouts of the real datasets (tests, smoke runs).

    python -m tools.make_miniature_data --root DIR [--datasets k1 k2 ...] [--classes N] [--per-class M]
                                        [--size S] [--no-split-json]

Each tree has N classes (the first N names of ``datasets/classnames/<key>.txt`` when that file exists)
with M small random RGB JPEGs each, and the real annotation files in their real formats (``.mat``
files with the same variables and fields, tab/space-separated lists, ``split_zhou_*.json`` where the
real dataset ships one). ``--no-split-json`` leaves the split files out, so the readers' fallback
path (building the split from the annotations) runs. The ImageNet test sets (``imagenet_a``, ``_r``,
``_sketch``, ``_v2``; evaluation only, not built by default) carry the class names and wnids of the
miniature ImageNet; A and R hold every other class of a twice larger ImageNet, a subset as the real ones
(200 of 1,000), so an ImageNet tree built with twice their ``--classes`` knows all their classes.
Importable: ``make_<key>(root, ...)``.
"""
import argparse
import hashlib
import json
import os
import os.path as osp
import sys

import numpy as np
from PIL import Image

from fairclip.toolbox.errors import UserError, report_error

# Real class names (facts), used when datasets/classnames/<key>.txt does not exist (yet).
FALLBACK_NAMES = {
    "oxford_pets": ["abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "bengal"],
    "stanford_cars": ["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 Acura TL Sedan",
                      "2008 Acura TL Type-S", "2012 Acura TSX Sedan", "2001 Acura Integra Type R"],
    "fgvc_aircraft": ["707-320", "727-200", "737-200", "737-300", "737-400", "737-500"],
    "oxford_flowers": ["pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea",
                       "english marigold", "tiger lily"],
    "food101": ["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare", "beet_salad"],
    "dtd": ["banded", "blotchy", "braided", "bubbly", "bumpy", "chequered"],
    "eurosat": ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road",
                "Industrial Buildings", "Pasture Land"],
    "ucf101": ["Apply_Eye_Makeup", "Apply_Lipstick", "Archery", "Baby_Crawling", "Balance_Beam", "Band_Marching"],
    "sun397": ["abbey", "airplane_cabin", "airport_terminal", "alley", "amphitheater", "amusement_arcade"],
    "caltech101": ["face", "leopard", "motorbike", "accordion", "airplane", "anchor"],
    "imagenet": ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark", "electric ray",
                 "stingray", "rooster", "hen", "ostrich", "brambling", "goldfinch"],
    "cub": ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross", "Groove_billed_Ani",
            "Crested_Auklet", "Least_Auklet"],
    "resisc45": ["airplane", "airport", "baseball_diamond", "basketball_court", "beach", "bridge"],
    "birdsnap": ["Acadian Flycatcher", "Acorn Woodpecker", "Alder Flycatcher", "Allen's Hummingbird",
                 "Altamira Oriole", "American Avocet"],
    "synthetic": ["class_a", "class_b", "class_c", "class_d", "class_e", "class_f"],
}

# Inverse of the readers' class-name cleanups.
EUROSAT_FOLDERS = {
    "Annual Crop Land": "AnnualCrop", "Herbaceous Vegetation Land": "HerbaceousVegetation",
    "Highway or Road": "Highway", "Industrial Buildings": "Industrial", "Pasture Land": "Pasture",
    "Permanent Crop Land": "PermanentCrop", "Residential Buildings": "Residential", "Sea or Lake": "SeaLake",
}
CALTECH_FOLDERS = {"airplane": "airplanes", "face": "Faces", "leopard": "Leopards", "motorbike": "Motorbikes"}


class Tree:
    """Helper that writes one miniature dataset folder."""

    def __init__(self, root, dirname, size, seed):
        self.dir = osp.join(osp.abspath(root), dirname)
        if osp.isdir(self.dir) and os.listdir(self.dir):
            raise UserError("{} already exists and is not empty; pass an empty --root".format(self.dir))
        os.makedirs(self.dir, exist_ok=True)
        self.size = size
        self.rng = np.random.default_rng(seed)

    def path(self, *parts):
        return osp.join(self.dir, *parts)

    def image(self, *parts):
        path = self.path(*parts)
        os.makedirs(osp.dirname(path), exist_ok=True)
        pixels = self.rng.integers(0, 256, size=(self.size, self.size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, format="JPEG", quality=85)
        return path

    def text(self, lines, *parts):
        path = self.path(*parts)
        os.makedirs(osp.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
        return path

    def json(self, obj, *parts):
        with open(self.path(*parts), "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=4)


def class_names(key, n):
    """First ``n`` class names of ``datasets/classnames/<key>.txt`` (fallback: FALLBACK_NAMES)."""
    from fairclip.datasets.texts import classnames_path, read_classnames_file

    path = classnames_path(key)
    names = read_classnames_file(path) if osp.isfile(path) else FALLBACK_NAMES[key]
    if n > len(names):
        raise UserError("--classes {} is more than the {} class names available for {}".format(n, len(names), key))
    return names[:n]


def partition(m):
    """Per-class (train, val, test) counts for m images, each >= 1."""
    if m < 4:
        raise UserError("--per-class must be at least 4 (every class needs train, val and test images)")
    n_val, n_test = max(1, m // 5), max(1, (3 * m) // 10)
    return m - n_val - n_test, n_val, n_test


def _info(tree, names, split=None, total=None, official_test=None):
    counts = None
    if split is not None:
        counts = {k: len(v) for k, v in split.items()}
    return {"dataset_dir": tree.dir, "classnames": list(names), "counts": counts, "split": split,
            "total": total, "official_test": official_test}


def _split_dict(rows, m):
    """rows: per class, list of (relpath, label, classname) of length m -> CoOp split dict."""
    n_trn, n_val, _ = partition(m)
    split = {"train": [], "val": [], "test": []}
    for group in rows:
        split["train"] += [list(r) for r in group[:n_trn]]
        split["val"] += [list(r) for r in group[n_trn:n_trn + n_val]]
        split["test"] += [list(r) for r in group[n_trn + n_val:]]
    return split


def _folder_dataset(tree, image_subdir, names, m, split_file, folder_of=None, stem=None):
    """Folder-per-class tree (DTD, Food101, EuroSAT, Caltech101, RESISC45, synthetic)."""
    rows = []
    for label, name in enumerate(names):
        folder = (folder_of or {}).get(name, name)
        group = []
        for j in range(m):
            fname = "{}_{:04d}.jpg".format(stem(folder) if stem else folder, j + 1)
            tree.image(image_subdir, folder, fname)
            group.append(("{}/{}".format(folder, fname), label, name))
        rows.append(group)
    split = _split_dict(rows, m)
    if split_file:
        tree.json(split, split_file)
    return split


def make_oxford_pets(root, classes=3, per_class=6, size=32, split_json=True, seed=0):
    names = class_names("oxford_pets", classes)
    tree = Tree(root, "oxford_pets", size, seed)
    _, _, n_test = partition(per_class)
    rows, trainval, test = [], [], []
    for label, breed in enumerate(names):
        species = 1 if label % 2 == 0 else 2  # cats have capitalised file names in the real data
        stem = "_".join(w.capitalize() for w in breed.split("_")) if species == 1 else breed
        group = []
        for j in range(per_class):
            imname = "{}_{}".format(stem, j + 1)
            tree.image("images", imname + ".jpg")
            line = "{} {} {} {}".format(imname, label + 1, species, label // 2 + 1)
            (trainval if j < per_class - n_test else test).append(line)
            group.append((imname + ".jpg", label, breed))
        rows.append(group)
    tree.text(trainval, "annotations", "trainval.txt")
    tree.text(test, "annotations", "test.txt")
    split = _official_split(rows, per_class)
    if split_json:
        tree.json(split, "split_zhou_OxfordPets.json")
    return _info(tree, names, split if split_json else None, classes * per_class, classes * n_test)


def _official_split(rows, m):
    """Split JSON for datasets with an official test list: the last n_test images of each class are
    test, the first n_val of the rest val (what a published split file looks like)."""
    _, n_val, n_test = partition(m)
    split = {"train": [], "val": [], "test": []}
    for group in rows:
        trainval, test = group[:m - n_test], group[m - n_test:]
        split["val"] += [list(r) for r in trainval[:n_val]]
        split["train"] += [list(r) for r in trainval[n_val:]]
        split["test"] += [list(r) for r in test]
    return split


def make_stanford_cars(root, classes=3, per_class=6, size=32, split_json=True, seed=0):
    from scipy.io import savemat

    names = class_names("stanford_cars", classes)
    tree = Tree(root, "stanford_cars", size, seed)
    _, _, n_test = partition(per_class)
    annos = {"cars_train": [], "cars_test": []}
    rows = []
    for label, name in enumerate(names):
        group = []
        for j in range(per_class):
            folder = "cars_train" if j < per_class - n_test else "cars_test"
            fname = "{:05d}.jpg".format(len(annos[folder]) + 1)
            tree.image(folder, fname)
            annos[folder].append((fname, label))
            group.append(("{}/{}".format(folder, fname), label, name))
        rows.append(group)
    os.makedirs(tree.path("devkit"), exist_ok=True)
    meta = np.empty((1, len(names)), dtype=object)
    for i, name in enumerate(names):
        words = name.split(" ")
        meta[0, i] = " ".join(words[1:] + words[:1])  # the .mat names end with the year
    savemat(tree.path("devkit", "cars_meta.mat"), {"class_names": meta})
    savemat(tree.path("devkit", "cars_train_annos.mat"), {"annotations": _car_annos(annos["cars_train"], size)})
    savemat(tree.path("cars_test_annos_withlabels.mat"), {"annotations": _car_annos(annos["cars_test"], size)})
    split = _official_split(rows, per_class)
    if split_json:
        tree.json(split, "split_zhou_StanfordCars.json")
    return _info(tree, names, split if split_json else None, classes * per_class, classes * n_test)


def _car_annos(rows, size):
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    annos = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for k, (fname, label) in enumerate(rows):
        box = [np.array([[v]], dtype=np.uint16) for v in (1, 1, size, size)]
        annos[0, k] = tuple(box + [np.array([[label + 1]], dtype=np.uint8), np.array([fname])])
    return annos


def make_fgvc_aircraft(root, classes=3, per_class=6, size=32, split_json=True, seed=0):
    names = class_names("fgvc_aircraft", classes)
    tree = Tree(root, "fgvc_aircraft", size, seed)
    n_trn, n_val, _ = partition(per_class)
    lists = {"train": [], "val": [], "test": []}
    image_id = 1000000
    for label, variant in enumerate(names):
        for j in range(per_class):
            image_id += 1
            tree.image("images", "{:07d}.jpg".format(image_id))
            part = "train" if j < n_trn else "val" if j < n_trn + n_val else "test"
            lists[part].append("{:07d} {}".format(image_id, variant))
    tree.text(names, "variants.txt")
    for part, lines in lists.items():
        tree.text(lines, "images_variant_{}.txt".format(part))
    info = _info(tree, names, None, classes * per_class)
    info["counts"] = {k: len(v) for k, v in lists.items()}  # the txt lists are the split
    return info


def make_oxford_flowers(root, classes=3, per_class=6, size=32, split_json=True, seed=0):
    from scipy.io import savemat

    names = class_names("oxford_flowers", classes)
    tree = Tree(root, "oxford_flowers", size, seed)
    rows = [[] for _ in names]
    labels = []
    for k in range(classes * per_class):  # classes interleaved, as the real label file is not sorted
        label = k % classes
        fname = "image_{:05d}.jpg".format(k + 1)
        tree.image("jpg", fname)
        labels.append(label + 1)
        rows[label].append((fname, label, names[label]))
    savemat(tree.path("imagelabels.mat"), {"labels": np.array([labels], dtype=np.uint8)})
    tree.json({str(i + 1): name for i, name in enumerate(names)}, "cat_to_name.json")
    split = _split_dict(rows, per_class)
    if split_json:
        tree.json(split, "split_zhou_OxfordFlowers.json")
    return _info(tree, names, split if split_json else None, classes * per_class)


def make_food101(root, classes=3, per_class=6, size=32, split_json=True, seed=0):
    names = class_names("food101", classes)
    tree = Tree(root, "food-101", size, seed)
    split = _folder_dataset(tree, "images", names, per_class, "split_zhou_Food101.json" if split_json else "")
    tree.text(names, "meta", "classes.txt")  # meta/ exists in the real archive (unused by the reader)
    return _info(tree, names, split if split_json else None, classes * per_class)


def make_dtd(root, classes=3, per_class=6, size=32, split_json=True, seed=0):
    names = class_names("dtd", classes)
    tree = Tree(root, "dtd", size, seed)
    split = _folder_dataset(tree, "images", names, per_class, "split_zhou_DescribableTextures.json" if split_json else "")
    return _info(tree, names, split if split_json else None, classes * per_class)


def make_eurosat(root, classes=3, per_class=6, size=32, split_json=True, seed=0):
    names = class_names("eurosat", classes)
    tree = Tree(root, "eurosat", size, seed)
    split = _folder_dataset(tree, "2750", names, per_class, "split_zhou_EuroSAT.json" if split_json else "",
                            folder_of=EUROSAT_FOLDERS)
    return _info(tree, names, split if split_json else None, classes * per_class)


def make_caltech101(root, classes=3, per_class=6, size=32, split_json=True, seed=0):
    names = class_names("caltech101", classes)
    tree = Tree(root, "caltech-101", size, seed)
    split = _folder_dataset(tree, "101_ObjectCategories", names, per_class,
                            "split_zhou_Caltech101.json" if split_json else "", folder_of=CALTECH_FOLDERS,
                            stem=lambda folder: "image")
    for ignored in ("BACKGROUND_Google", "Faces_easy"):  # present in the archive, left out by the reader
        for j in range(2):
            tree.image("101_ObjectCategories", ignored, "image_{:04d}.jpg".format(j + 1))
    return _info(tree, names, split if split_json else None, classes * per_class)


def make_resisc45(root, classes=3, per_class=6, size=32, split_json=True, seed=0):
    names = class_names("resisc45", classes)
    tree = Tree(root, "resisc45", size, seed)
    # The real archive has no split file: ours is built by the reader (split_json is ignored).
    _folder_dataset(tree, "NWPU-RESISC45", names, per_class, "")
    return _info(tree, names, None, classes * per_class)


def make_synthetic(root, classes=3, per_class=6, size=32, split_json=True, seed=0):
    names = class_names("synthetic", classes)
    tree = Tree(root, "synthetic_fg", size, seed)
    split = _folder_dataset(tree, "images", names, per_class, "split_zhou_SyntheticFG.json" if split_json else "")
    return _info(tree, names, split if split_json else None, classes * per_class)


def make_ucf101(root, classes=3, per_class=6, size=32, split_json=True, seed=0):
    names = class_names("ucf101", classes)
    tree = Tree(root, "ucf101", size, seed)
    _, _, n_test = partition(per_class)
    class_ind, trainlist, testlist, rows = [], [], [], []
    for label, name in enumerate(names):
        action = name.replace("_", "")
        class_ind.append("{} {}".format(label + 1, action))
        group = []
        for j in range(per_class):
            video = "v_{}_g{:02d}_c01".format(action, j + 1)
            tree.image("UCF-101-midframes", name, video + ".jpg")
            if j < per_class - n_test:
                trainlist.append("{}/{}.avi {}".format(action, video, label + 1))
            else:
                testlist.append("{}/{}.avi".format(action, video))
            group.append(("{}/{}.jpg".format(name, video), label, name))
        rows.append(group)
    tree.text(class_ind, "ucfTrainTestlist", "classInd.txt")
    tree.text(trainlist, "ucfTrainTestlist", "trainlist01.txt")
    tree.text(testlist, "ucfTrainTestlist", "testlist01.txt")
    split = _official_split(rows, per_class)
    if split_json:
        tree.json(split, "split_zhou_UCF101.json")
    return _info(tree, names, split if split_json else None, classes * per_class, classes * n_test)


def make_sun397(root, classes=3, per_class=6, size=32, split_json=True, seed=0):
    names = class_names("sun397", classes)
    tree = Tree(root, "sun397", size, seed)
    _, _, n_test = partition(per_class)
    class_lines, training, testing, rows = [], [], [], []
    for label, name in enumerate(names):
        parts = name.split(" ")[::-1]  # "outdoor apartment_building" -> apartment_building/outdoor
        scene = "{}/{}".format(parts[0][0], "/".join(parts))
        class_lines.append("/" + scene)
        group = []
        for j in range(per_class):
            imname = "{}/sun_{:016x}.jpg".format(scene, 7919 * (label * per_class + j) + 1)
            tree.image("SUN397", *imname.split("/"))
            (training if j < per_class - n_test else testing).append("/" + imname)
            group.append((imname, label, name))
        rows.append(group)
    tree.text(class_lines, "ClassName.txt")
    tree.text(training, "Training_01.txt")
    tree.text(testing, "Testing_01.txt")
    split = _official_split(rows, per_class)
    if split_json:
        tree.json(split, "split_zhou_SUN397.json")
    return _info(tree, names, split if split_json else None, classes * per_class, classes * n_test)


def imagenet_wnid(label):
    """The miniature trees' wnid of ImageNet label ``label`` (sorted like the real wnids)."""
    return "n{:08d}".format(1440764 + 1000 * label)


def make_imagenet(root, classes=3, per_class=6, size=32, split_json=True, seed=0):
    names = class_names("imagenet", classes)
    tree = Tree(root, "imagenet", size, seed)
    _, _, n_test = partition(per_class)
    lines = []
    val_id = 0
    for label, name in enumerate(names):
        wnid = imagenet_wnid(label)
        lines.append("{} {}".format(wnid, name))
        for j in range(per_class - n_test):
            tree.image("images", "train", wnid, "{}_{}.JPEG".format(wnid, j + 1))
        for j in range(n_test):
            val_id += 1
            tree.image("images", "val", wnid, "ILSVRC2012_val_{:08d}.JPEG".format(val_id))
    tree.text(lines, "classnames.txt")
    info = _info(tree, names, None, classes * per_class, classes * n_test)
    info["counts"] = {"train": classes * (per_class - n_test), "val": classes * n_test, "test": classes * n_test}
    return info


def _imagenet_test_set(root, dirname, image_subdir, imagenet_classes, labels, per_class, size, seed,
                       folder_per_label=False, readme=False):
    """An evaluation-only ImageNet test set (CoOp's layout): ImageNet's ``classnames.txt`` for
    ``imagenet_classes`` classes (the names and wnids ``make_imagenet`` gives them) and ``per_class`` images
    for each ImageNet label in ``labels``, in a folder named by wnid (or by label)."""
    names = class_names("imagenet", imagenet_classes)
    tree = Tree(root, dirname, size, seed)
    tree.text(["{} {}".format(imagenet_wnid(i), name) for i, name in enumerate(names)], "classnames.txt")
    for label in labels:
        folder = str(label) if folder_per_label else imagenet_wnid(label)
        for j in range(per_class):
            tree.image(image_subdir, folder, "{}_{}.jpg".format(folder, j + 1))
    if readme:
        tree.text(["the archive's README (not a class folder)"], image_subdir, "README.txt")
    n = len(labels) * per_class
    info = _info(tree, [names[label] for label in labels], None, n)
    info["counts"] = {"train": n, "val": n, "test": n}
    info["imagenet_labels"] = list(labels)  # the ImageNet label of each class, in label order
    return info


def make_imagenet_a(root, classes=3, per_class=6, size=32, split_json=True, seed=0):
    """ImageNet-A: a subset (every other class of a 2 x ``classes`` ImageNet, starting at label 1)."""
    return _imagenet_test_set(root, "imagenet-adversarial", "imagenet-a", 2 * classes,
                              [2 * i + 1 for i in range(classes)], per_class, size, seed, readme=True)


def make_imagenet_r(root, classes=3, per_class=6, size=32, split_json=True, seed=0):
    """ImageNet-R: a subset (every other class of a 2 x ``classes`` ImageNet, starting at label 0)."""
    return _imagenet_test_set(root, "imagenet-rendition", "imagenet-r", 2 * classes,
                              [2 * i for i in range(classes)], per_class, size, seed, readme=True)


def make_imagenet_sketch(root, classes=3, per_class=6, size=32, split_json=True, seed=0):
    return _imagenet_test_set(root, "imagenet-sketch", "images", classes, range(classes), per_class, size, seed)


def make_imagenet_v2(root, classes=3, per_class=6, size=32, split_json=True, seed=0):
    return _imagenet_test_set(root, "imagenetv2", "imagenetv2-matched-frequency-format-val", classes,
                              range(classes), per_class, size, seed, folder_per_label=True)


def make_cub(root, classes=3, per_class=6, size=32, split_json=True, seed=0):
    names = class_names("cub", classes)
    tree = Tree(root, "cub", size, seed)
    _, _, n_test = partition(per_class)
    class_lines, image_lines, label_lines, split_lines = [], [], [], []
    image_id = 0
    for label, name in enumerate(names):
        folder = "{:03d}.{}".format(label + 1, name)
        class_lines.append("{} {}".format(label + 1, folder))
        for j in range(per_class):
            image_id += 1
            relpath = "{}/{}_{:04d}_{}.jpg".format(folder, name, j + 1, 100 + j)
            tree.image("CUB_200_2011", "images", *relpath.split("/"))
            image_lines.append("{} {}".format(image_id, relpath))
            label_lines.append("{} {}".format(image_id, label + 1))
            # the official test images are interleaved with the training ones
            split_lines.append("{} {}".format(image_id, 0 if j % 2 == 1 and j // 2 < n_test else 1))
    for lines, fname in ((class_lines, "classes.txt"), (image_lines, "images.txt"),
                         (label_lines, "image_class_labels.txt"), (split_lines, "train_test_split.txt")):
        tree.text(lines, "CUB_200_2011", fname)
    return _info(tree, names, None, classes * per_class, classes * n_test)


BIRDSNAP_PARTS = ["back", "beak", "belly", "breast", "crown", "forehead", "left_cheek", "left_eye", "left_leg",
                  "left_wing", "nape", "right_cheek", "right_eye", "right_leg", "right_wing", "tail", "throat"]


def make_birdsnap(root, classes=3, per_class=6, size=32, split_json=True, seed=0, missing=1):
    """``missing``: how many listed training images are left undownloaded (Flickr failures)."""
    names = class_names("birdsnap", classes)
    tree = Tree(root, "birdsnap", size, seed)
    _, _, n_test = partition(per_class)
    species = ["id\tcommon\tscientific\tdir"]
    header = ["url", "md5", "path", "species_id", "bb_x1", "bb_y1", "bb_x2", "bb_y2"]
    header += ["{}_{}".format(p, c) for p in BIRDSNAP_PARTS for c in ("x", "y")]
    images, tests = ["\t".join(header)], ["path"]
    image_no, skipped = 0, 0
    for label, name in enumerate(names):
        folder = "".join(ch for ch in name.replace(" ", "_") if ch.isalnum() or ch in "_-")
        species.append("{}\t{}\tAvis species{}\t{}".format(label + 1, name, label + 1, folder))
        for j in range(per_class):
            image_no += 1
            relpath = "{}/{}.jpg".format(folder, image_no)
            is_test = j >= per_class - n_test
            if not is_test and skipped < missing and j == 0:
                skipped += 1
                md5 = "0" * 32  # listed but never downloaded
            else:
                path = tree.image("download", "images", *relpath.split("/"))
                with open(path, "rb") as f:
                    md5 = hashlib.md5(f.read()).hexdigest()
            parts = ["{}".format(size // 2)] * (2 * len(BIRDSNAP_PARTS))
            images.append("\t".join(["http://example.invalid/{}.jpg".format(image_no), md5, relpath,
                                     str(label + 1), "1", "1", str(size), str(size)] + parts))
            if is_test:
                tests.append(relpath)
    tree.text(species, "species.txt")
    tree.text(images, "images.txt")
    tree.text(tests, "test_images.txt")
    return _info(tree, names, None, classes * per_class - skipped, classes * n_test)


BUILDERS = {
    "oxford_pets": make_oxford_pets, "stanford_cars": make_stanford_cars, "fgvc_aircraft": make_fgvc_aircraft,
    "oxford_flowers": make_oxford_flowers, "food101": make_food101, "dtd": make_dtd, "eurosat": make_eurosat,
    "ucf101": make_ucf101, "sun397": make_sun397, "caltech101": make_caltech101, "imagenet": make_imagenet,
    "cub": make_cub, "resisc45": make_resisc45, "birdsnap": make_birdsnap, "synthetic": make_synthetic,
    "imagenet_a": make_imagenet_a, "imagenet_r": make_imagenet_r, "imagenet_sketch": make_imagenet_sketch,
    "imagenet_v2": make_imagenet_v2,
}
EVAL_ONLY = ["imagenet_a", "imagenet_r", "imagenet_sketch", "imagenet_v2"]  # test sets of ImageNet-adapted models
BENCHMARKS = [k for k in BUILDERS if k != "synthetic" and k not in EVAL_ONLY]  # the 14 benchmark datasets


def make_all(root, keys=None, **kwargs):
    """Build the miniature trees of ``keys`` (default: the 14 benchmark datasets); returns {key: info}."""
    keys = list(keys or BENCHMARKS)
    unknown = [k for k in keys if k not in BUILDERS]
    if unknown:
        raise UserError("unknown dataset key(s) {}; choose from {}".format(", ".join(unknown), ", ".join(BUILDERS)))
    return {key: BUILDERS[key](root, **kwargs) for key in keys}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="where the dataset folders are written (DATASET.ROOT)")
    parser.add_argument("--datasets", nargs="+", default=None, help="dataset keys (default: the 14 benchmarks)")
    parser.add_argument("--classes", type=int, default=3, help="classes per dataset (default 3)")
    parser.add_argument("--per-class", type=int, default=6, help="images per class (default 6, at least 4)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    parser.add_argument("--no-split-json", action="store_true", help="leave out split_zhou_*.json (tests the fallback)")
    args = parser.parse_args(argv)
    try:
        if args.classes < 1 or args.size < 8:
            raise UserError("--classes must be >= 1 and --size >= 8")
        infos = make_all(args.root, args.datasets, classes=args.classes, per_class=args.per_class,
                         size=args.size, split_json=not args.no_split_json)
    except UserError as exc:
        return report_error(exc)
    for key, info in infos.items():
        print("{:15s} {} ({} classes, {} images)".format(key, info["dataset_dir"], len(info["classnames"]), info["total"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
