"""Dataset readers over miniature trees in the real layouts (tools/make_miniature_data.py): sizes,
labels, class names, split-JSON round trip, fallback split building, few-shot cache, templates."""
import json
import os
import os.path as osp
import random

import pytest

from fairclip.toolbox import DATASET_REGISTRY
from fairclip.toolbox.errors import UserError

from fairclip import datasets
from fairclip.datasets import DATASET_KEYS, key_for
from fairclip.datasets.common import FEWSHOT_DIRNAME, save_split, split_per_class
from fairclip.datasets.texts import classnames_path, read_classnames_file
from tests.conftest import build_dataset, make_dataset_cfg
from fairclip.tools.make_miniature_data import BUILDERS, EVAL_ONLY, make_all, partition

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
ALL_KEYS = list(BUILDERS)
# Readers that build (and save) a split when the split file is absent.
FALLBACK_KEYS = [k for k in ALL_KEYS if k not in ("fgvc_aircraft", "imagenet", "synthetic") and k not in EVAL_ONLY]
N, M = 3, 6  # classes and images per class of the miniature trees


def entries(items):
    return sorted((it.impath, it.label, it.classname) for it in items)


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini")
    return root, make_all(root, ALL_KEYS, classes=N, per_class=M)


# --------------------------------------------------------------------------- every reader
@pytest.mark.parametrize("key", ALL_KEYS)
def test_reader_on_miniature_tree(mini, key, tmp_path):
    root, infos = mini
    info = infos[key]
    ds = build_dataset(root, key)

    if info["counts"]:
        assert {"train": len(ds.train_x), "val": len(ds.val), "test": len(ds.test)} == info["counts"]
    assert ds.num_classes == N
    assert ds.classnames == info["classnames"]
    if osp.isfile(classnames_path(key)):
        assert ds.classnames == read_classnames_file(classnames_path(key))[:N]
    for split in (ds.train_x, ds.val, ds.test):
        assert {it.label for it in split} == set(range(N))
        assert all(it.classname == ds.classnames[it.label] and osp.isfile(it.impath) for it in split)
    if key == "imagenet" or key in EVAL_ONLY:
        assert ds.val is ds.test

    if info["split"] is not None:  # the split file we wrote comes back unchanged
        out = tmp_path / "roundtrip.json"
        save_split(ds.train_x, ds.val, ds.test, str(out), ds.image_dir)
        assert json.loads(out.read_text()) == info["split"]
    again = build_dataset(root, key)  # a second build (reading any file the first one saved) is identical
    for a, b in ((ds.train_x, again.train_x), (ds.val, again.val), (ds.test, again.test)):
        assert entries(a) == entries(b)


@pytest.mark.parametrize("key", FALLBACK_KEYS)
def test_fallback_builds_a_seeded_split(key, tmp_path):
    info = BUILDERS[key](tmp_path / "a", classes=N, per_class=M, split_json=False)
    ds = build_dataset(tmp_path / "a", key)
    split_path = osp.join(info["dataset_dir"], ds.split_file)
    assert osp.isfile(split_path), "the fallback saves the split it built"
    assert ds.classnames == info["classnames"]
    assert len(ds.train_x) + len(ds.val) + len(ds.test) == info["total"]
    if info["official_test"]:
        assert len(ds.test) == info["official_test"]
    for split in (ds.train_x, ds.val, ds.test):
        assert {it.label for it in split} == set(range(N))

    saved = json.loads(open(split_path).read())
    assert all(not osp.isabs(e[0]) for s in saved.values() for e in s)
    again = build_dataset(tmp_path / "a", key)  # now read from the saved file
    assert entries(again.train_x) == entries(ds.train_x) and entries(again.test) == entries(ds.test)

    random.seed(12345)  # the global RNG state must not matter
    other = BUILDERS[key](tmp_path / "b", classes=N, per_class=M, split_json=False)
    build_dataset(tmp_path / "b", key)
    assert json.loads(open(osp.join(other["dataset_dir"], ds.split_file)).read()) == saved


def test_stanford_cars_split_paths_are_relative_to_the_dataset_folder(mini):
    root, infos = mini
    split = infos["stanford_cars"]["split"]
    assert {e[0].split("/")[0] for e in split["train"] + split["test"]} <= {"cars_train", "cars_test"}


def test_birdsnap_leaves_out_failed_downloads(tmp_path):
    info = BUILDERS["birdsnap"](tmp_path, classes=N, per_class=M, missing=1)
    ds = build_dataset(tmp_path, "birdsnap")
    assert len(ds.train_x) + len(ds.val) + len(ds.test) == info["total"] == N * M - 1


@pytest.mark.parametrize("key", ["dtd", "stanford_cars", "imagenet", "fgvc_aircraft"])
def test_fewshot_subset_is_cached_as_relative_json(mini, key):
    root, infos = mini
    ds = build_dataset(root, key, "DATASET.NUM_SHOTS", 2, "SEED", 1)
    counts = {}
    for it in ds.train_x:
        counts[it.label] = counts.get(it.label, 0) + 1
    assert counts == {label: 2 for label in range(N)}
    dataset_dir = infos[key]["dataset_dir"]
    cache = osp.join(dataset_dir, FEWSHOT_DIRNAME, "shot_2-seed_1.json")
    data = json.loads(open(cache).read())
    assert data["num_shots"] == 2 and data["seed"] == 1
    assert all(not osp.isabs(e[0]) and osp.isfile(osp.join(dataset_dir, e[0])) for e in data["train"])
    assert not osp.exists(osp.join(dataset_dir, "split_fewshot")), "CoOp's pickle folder is not touched"
    assert entries(build_dataset(root, key, "DATASET.NUM_SHOTS", 2, "SEED", 1).train_x) == entries(ds.train_x)
    if key == "imagenet":
        assert "val" not in data and len(ds.val) == N * partition(M)[2]


def test_stale_fewshot_cache_is_a_clear_error(tmp_path):
    info = BUILDERS["dtd"](tmp_path, classes=N, per_class=M)
    build_dataset(tmp_path, "dtd", "DATASET.NUM_SHOTS", 1, "SEED", 3)
    cache = osp.join(info["dataset_dir"], FEWSHOT_DIRNAME, "shot_1-seed_3.json")
    data = json.loads(open(cache).read())
    test_entry = info["split"]["test"][0]
    data["train"][0] = ["images/" + test_entry[0], test_entry[1], test_entry[2]]
    open(cache, "w").write(json.dumps(data))
    with pytest.raises(UserError, match="not in the current train split.*delete"):
        build_dataset(tmp_path, "dtd", "DATASET.NUM_SHOTS", 1, "SEED", 3)


def test_subsample_base_and_new_classes(mini):
    root, infos = mini
    base = build_dataset(root, "dtd", "DATASET.SUBSAMPLE_CLASSES", "base")
    new = build_dataset(root, "dtd", "DATASET.SUBSAMPLE_CLASSES", "new")
    names = infos["dtd"]["classnames"]
    assert base.classnames == names[:2] and new.classnames == names[2:]
    assert {it.label for it in new.test} == {0}
    with pytest.raises(UserError, match="DATASET.SUBSAMPLE_CLASSES"):
        build_dataset(root, "dtd", "DATASET.SUBSAMPLE_CLASSES", "half")


def test_split_per_class_ignores_the_global_rng():
    items = [("/x/{}/{}.jpg".format(c, i), c, "c{}".format(c)) for c in range(2) for i in range(10)]
    random.seed(0)
    first = split_per_class(items, "T")
    random.seed(99)
    assert split_per_class(list(reversed(items)), "T") == first
    assert [len(part) for part in first] == [10, 4, 6]


# --------------------------------------------------------------------------- class-name cleanups
def test_class_name_cleanups():
    from fairclip.datasets.cub import folder_to_classname
    from fairclip.datasets.oxford_pets import breed_from_image_name
    from fairclip.datasets.stanford_cars import year_first
    from fairclip.datasets.sun397 import scene_to_classname
    from fairclip.datasets.ucf101 import action_to_classname

    assert breed_from_image_name("American_Pit_Bull_Terrier_12") == "american_pit_bull_terrier"
    assert year_first("AM General Hummer SUV 2000") == "2000 AM General Hummer SUV"
    assert action_to_classname("ApplyEyeMakeup") == "Apply_Eye_Makeup"
    assert scene_to_classname("a/apartment_building/outdoor") == "outdoor apartment_building"
    assert folder_to_classname("001.Black_footed_Albatross") == "Black_footed_Albatross"


@pytest.mark.parametrize("key", ["ucf101", "sun397", "stanford_cars"])
def test_full_class_lists_survive_the_miniature_inverse_mapping(key):
    """Every shipped class name can be laid out on disk and read back unchanged."""
    from fairclip.datasets.stanford_cars import year_first
    from fairclip.datasets.sun397 import scene_to_classname
    from fairclip.datasets.ucf101 import action_to_classname

    assert osp.isfile(classnames_path(key)), "no class-name list for " + key
    for name in read_classnames_file(classnames_path(key)):
        if key == "ucf101":
            assert action_to_classname(name.replace("_", "")) == name
        elif key == "sun397":
            parts = name.split(" ")[::-1]
            assert scene_to_classname("{}/{}".format(parts[0][0], "/".join(parts))) == name
        else:
            words = name.split(" ")
            assert year_first(" ".join(words[1:] + words[:1])) == name


# --------------------------------------------------------------------------- keys, configs, templates
def test_dataset_configs_match_the_registry():
    from yacs.config import CfgNode

    stems = sorted(f[:-5] for f in os.listdir(osp.join(REPO, "configs", "datasets")) if f.endswith(".yaml"))
    assert set(DATASET_KEYS) - {"synthetic"} <= set(stems)
    for key in set(DATASET_KEYS) - {"synthetic"}:
        with open(osp.join(REPO, "configs", "datasets", key + ".yaml")) as f:
            name = CfgNode.load_cfg(f).DATASET.NAME
        assert name == DATASET_KEYS[key] and key_for(name) == key
        assert name in DATASET_REGISTRY.registered_names()
    assert key_for("Nope") == "Nope"  # a host's dataset is its own key


def test_templates(tmp_path):
    from fairclip.datasets.templates import SINGLE_TEMPLATE, TEMPLATES, get_templates

    for key in DATASET_KEYS:
        templates = get_templates("ensemble", key)
        assert templates and all(t.count("{}") == 1 for t in templates)
    assert len(TEMPLATES["imagenet"]) == 80
    assert get_templates("single", "cub") == [SINGLE_TEMPLATE]
    good = tmp_path / "t.json"
    good.write_text(json.dumps(["a {} bird.", "the {}."]))
    assert get_templates(str(good), "cub") == ["a {} bird.", "the {}."]
    for content, message in (("[1, 2]", "list of strings"), ('["no slot"]', "exactly once"), ("{", "not valid JSON")):
        bad = tmp_path / "bad.json"
        bad.write_text(content)
        with pytest.raises(UserError, match=message):
            get_templates(str(bad), "cub")
    with pytest.raises(UserError, match="neither 'ensemble', 'coop', 'single'"):
        get_templates(str(tmp_path / "absent.json"), "cub")


def test_description_file_missing_classes_is_listed(mini, tmp_path):
    from fairclip.datasets.texts import load_descriptions

    root, infos = mini
    cfg = make_dataset_cfg(root, "dtd")
    assert datasets.descriptions_path(cfg).endswith(osp.join("descriptions", "dtd.json"))
    names = infos["dtd"]["classnames"]
    cupl = tmp_path / "cupl.json"
    cupl.write_text(json.dumps({names[0]: ["a striped thing."]}))
    cfg = make_dataset_cfg(root, "dtd", "DATASET.DESCRIPTIONS", str(cupl))
    with pytest.raises(UserError, match="lacks 2 of 3 classes.*{}".format(names[1])):
        load_descriptions(datasets.descriptions_path(cfg), names)
