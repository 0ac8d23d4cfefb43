"""CoOp's protocol reproduced exactly: few-shot subsets (Dassl's sampling rule), ImageNet's file order,
CoOp's zero-shot prompt per dataset (``DATASET.TEMPLATES coop``) and CoOp's dataset config files.

The reference rules and strings below are written here from CoOp's and Dassl's public code (facts:
one prompt per dataset, one DATASET.NAME per config file), independently of our implementation.
"""
import json
import os
import os.path as osp
import random

import pytest
import torch
import torch.nn.functional as F

from fairclip.datasets.common import FEWSHOT_DIRNAME
from fairclip.tools.make_miniature_data import make_dtd, make_imagenet
from tests.conftest import REPO, build_dataset, build_seeded, trainer_cfg

SHOTS, SEED = 2, 1


# --------------------------------------------------------------------------- Dassl's few-shot rule
def dassl_fewshot(split, num_shots, seed):
    """Dassl's ``generate_fewshot_dataset`` as CoOp's readers call it, restated: after ``random.seed(SEED)``
    (Dassl's set_random_seed), for the train list and then the val list (``min(K, 4)`` shots), group the
    entries by label in the order the labels first occur, and per group take ``random.sample(group, K)``
    (the whole group when it is smaller). ``split``: {"train": [...], "val": [...]} of entries."""
    random.seed(seed)
    out = {}
    for name, k in (("train", num_shots), ("val", min(num_shots, 4))):
        if name not in split:
            continue
        order, groups = [], {}
        for entry in split[name]:
            if entry[1] not in groups:
                order.append(entry[1])
                groups[entry[1]] = []
            groups[entry[1]].append(entry)
        out[name] = []
        for label in order:
            group = groups[label]
            out[name].extend(random.sample(group, k) if len(group) >= k else group)
    return out


def relpaths(items, base):
    return [(osp.relpath(it.impath, base), it.label) for it in items]


@pytest.fixture
def shuffled_dtd(tmp_path):
    """A miniature DTD whose split file lists the labels out of order (train starts with label 2)."""
    info = make_dtd(str(tmp_path), classes=3, per_class=10, size=16)
    path = osp.join(info["dataset_dir"], "split_zhou_DescribableTextures.json")
    split = json.loads(open(path).read())
    rng = random.Random(7)
    for name in ("train", "val"):
        rng.shuffle(split[name])
        split[name].sort(key=lambda e: e[1] != 2)  # label 2 first, the rest in shuffled order
    open(path, "w").write(json.dumps(split))
    return str(tmp_path), info, split


def test_fewshot_follows_dassl_with_labels_out_of_order(shuffled_dtd):
    root, info, split = shuffled_dtd
    ds = build_dataset(root, "dtd", "DATASET.NUM_SHOTS", SHOTS, "SEED", SEED)
    images = osp.join(info["dataset_dir"], "images")
    expected = dassl_fewshot(split, SHOTS, SEED)
    assert relpaths(ds.train_x, images) == [(e[0], e[1]) for e in expected["train"]]
    assert relpaths(ds.val, images) == [(e[0], e[1]) for e in expected["val"]]
    assert [it.label for it in ds.train_x][:SHOTS] == [2] * SHOTS  # first-appearance order, not sorted

    # the cache gives the same lists back, in the same order
    again = build_dataset(root, "dtd", "DATASET.NUM_SHOTS", SHOTS, "SEED", SEED)
    assert relpaths(again.train_x, images) == relpaths(ds.train_x, images)
    assert relpaths(again.val, images) == relpaths(ds.val, images)


def test_fewshot_cache_from_another_rule_is_drawn_again(shuffled_dtd):
    root, info, split = shuffled_dtd
    images = osp.join(info["dataset_dir"], "images")
    first = build_dataset(root, "dtd", "DATASET.NUM_SHOTS", SHOTS, "SEED", SEED)
    cache = osp.join(info["dataset_dir"], FEWSHOT_DIRNAME, "shot_{}-seed_{}.json".format(SHOTS, SEED))
    data = json.loads(open(cache).read())
    del data["sampler"]  # as written by the older, sorted-label rule
    data["train"] = sorted(data["train"], key=lambda e: e[1])
    open(cache, "w").write(json.dumps(data))
    again = build_dataset(root, "dtd", "DATASET.NUM_SHOTS", SHOTS, "SEED", SEED)
    assert relpaths(again.train_x, images) == relpaths(first.train_x, images)
    assert "sampler" in json.loads(open(cache).read())


def test_imagenet_keeps_listdir_order_and_dassl_fewshot(tmp_path):
    info = make_imagenet(str(tmp_path), classes=3, per_class=9, size=16)
    train_dir = osp.join(info["dataset_dir"], "images", "train")
    listed = []  # CoOp: sorted wnid folders, os.listdir order inside each
    for label, wnid in enumerate(sorted(os.listdir(train_dir))):
        listed += [("{}/{}".format(wnid, f), label) for f in os.listdir(osp.join(train_dir, wnid))
                   if not f.startswith(".")]
    ds = build_dataset(str(tmp_path), "imagenet")
    assert relpaths(ds.train_x, train_dir) == listed
    shots = build_dataset(str(tmp_path), "imagenet", "DATASET.NUM_SHOTS", SHOTS, "SEED", SEED)
    expected = dassl_fewshot({"train": listed}, SHOTS, SEED)["train"]
    assert relpaths(shots.train_x, train_dir) == expected


# --------------------------------------------------------------------------- CoOp's zero-shot prompts
# CoOp's ZeroshotCLIP: one prompt per dataset, keyed by the registered reader name (trainers/zsclip.py).
COOP_PROMPTS = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}
# Our stated rule for the datasets CoOp does not have: the first template of the CLIP list we use.
OUR_RULE = {
    "CUB200": "a photo of a {}, a type of bird.",
    "Birdsnap": "a photo of a {}, a type of bird.",
    "RESISC45": "satellite imagery of {}.",
    "SyntheticFG": "a photo of a {}.",
}


def coop_prompts(template, classnames):
    """CoOp's prompt text: the template filled with the class name, underscores as spaces."""
    return [template.format(c.replace("_", " ")) for c in classnames]


def test_coop_templates_give_coops_prompt_for_every_dataset():
    from fairclip import datasets
    from fairclip.clip_backbone.text import fill_template
    from fairclip.config import get_cfg

    assert set(COOP_PROMPTS) | set(OUR_RULE) == set(datasets.DATASET_KEYS.values())
    names = ["sea_horse", "Apply_Eye_Makeup", "2012 Tesla Model S"]
    for name, template in list(COOP_PROMPTS.items()) + list(OUR_RULE.items()):
        cfg = get_cfg()
        cfg.DATASET.NAME, cfg.DATASET.TEMPLATES = name, "coop"
        ours = datasets.templates_for(cfg)  # what ZeroshotCLIP.templates() returns
        assert [fill_template(t, c) for t in ours for c in names] == coop_prompts(template, names), name


def test_results_table_names_the_template_set():
    from fairclip.tools.results_table import _text_sources

    runs = [{"dataset": "DescribableTextures", "protocol": {"text": {"templates": "coop"}}}]
    assert _text_sources(runs) == "templates=coop (CoOp's per-dataset prompt)"
    runs[0]["protocol"]["text"]["templates"] = "/my/templates.json"
    assert _text_sources(runs) == "templates=/my/templates.json"


def test_zeroshot_clip_with_coop_embeds_coops_dtd_prompts(mini_dtd, tiny_clip, tmp_path):
    from fairclip.clip_backbone.text import encode_texts

    cfg = trainer_cfg("ZeroshotCLIP", "dtd", mini_dtd, str(tmp_path / "out"), "MODEL.BACKBONE.PATH", tiny_clip,
                      "DATASET.TEMPLATES", "coop", "DATALOADER.NUM_WORKERS", "0")
    trainer = build_seeded(cfg)
    texts = coop_prompts(COOP_PROMPTS["DescribableTextures"], trainer.classnames)
    assert texts[0] == "{} texture.".format(trainer.classnames[0].replace("_", " "))
    reference = F.normalize(encode_texts(trainer.clip_model, texts, trainer.clip_info["fingerprint"]).float(), dim=-1)
    assert (trainer.class_weights.cpu() - reference.cpu()).abs().max() < 1e-5
    assert trainer.text_sources() == {"templates": "coop"}


# --------------------------------------------------------------------------- CoOp's dataset configs
# CoOp's configs/datasets/<file>.yaml: each holds only DATASET.NAME.
COOP_DATASET_CONFIGS = {
    "caltech101": "Caltech101", "dtd": "DescribableTextures", "eurosat": "EuroSAT", "fgvc_aircraft": "FGVCAircraft",
    "food101": "Food101", "imagenet": "ImageNet", "imagenet_a": "ImageNetA", "imagenet_r": "ImageNetR",
    "imagenet_sketch": "ImageNetSketch", "imagenetv2": "ImageNetV2", "oxford_flowers": "OxfordFlowers",
    "oxford_pets": "OxfordPets", "stanford_cars": "StanfordCars", "sun397": "SUN397", "ucf101": "UCF101",
}


def test_coops_15_dataset_configs_are_accepted_by_train_py(tmp_path):
    from train import build_parser, setup_cfg

    method = osp.join(REPO, "configs", "trainers", "FAIR", "vit_b32.yaml")
    for stem, name in COOP_DATASET_CONFIGS.items():
        path = tmp_path / (stem + ".yaml")
        path.write_text('DATASET:\n  NAME: "{}"\n'.format(name))
        args = build_parser().parse_args(["--root", str(tmp_path), "--trainer", "FAIR", "--dataset-config-file",
                                          str(path), "--config-file", method, "--output-dir", str(tmp_path / "o")])
        cfg = setup_cfg(args)  # raises a UserError for an unknown reader or key
        assert cfg.DATASET.NAME == name
        assert cfg.RUN.CONFIG_FILES[:2] == [str(path), method]


# --------------------------------------------------------------------------- ImageNet -> ImageNet-A (eval only)
def test_model_adapted_on_imagenet_is_tested_on_the_imagenet_a_subset(tiny_clip, tmp_path):
    """CoOp's domain-generalisation protocol: FAIR adapted on ImageNet, tested with --eval-only on
    ImageNet-A, whose classes are a subset; the anchors of those classes are the ones evaluated."""
    from fairclip.toolbox.errors import UserError
    from fairclip.tools.make_miniature_data import make_imagenet_a

    root = str(tmp_path / "data")
    imagenet = make_imagenet(root, classes=6, per_class=4, size=16)
    subset = make_imagenet_a(root, classes=3, per_class=2, size=16)
    descriptions = tmp_path / "imagenet_descriptions.json"
    descriptions.write_text(json.dumps({c: ["a {} seen up close.".format(c), "a picture of a {}.".format(c)]
                                        for c in imagenet["classnames"]}))
    opts = ["MODEL.BACKBONE.PATH", tiny_clip, "DATASET.DESCRIPTIONS", str(descriptions), "DATALOADER.NUM_WORKERS", "0",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "OPTIM.MAX_EPOCH", "1", "TRAINER.FAIR.N_CROPS", "2",
            "TRAINER.FAIR.TOP_K", "1", "VERBOSE", "False"]
    run = str(tmp_path / "imagenet_run")
    trainer = build_seeded(trainer_cfg("FAIR", "imagenet", root, run, *opts))
    with torch.no_grad():  # stand-in for training: every class's anchor made distinct, then checkpointed
        trainer.model.anchors.add_(torch.randn_like(trainer.model.anchors))
    trainer.save_model(0, run)
    trained = trainer.model.anchors.detach().clone()
    assert json.load(open(osp.join(run, "classnames.json")))["classnames"] == imagenet["classnames"]

    target = build_seeded(trainer_cfg("FAIR", "imagenet_a", root, str(tmp_path / "a_eval"), *opts))
    assert target.classnames == subset["classnames"]
    target.load_model(run)
    assert torch.equal(target.model.anchors.detach(), trained[subset["imagenet_labels"]])
    target.test()
    result = json.load(open(osp.join(str(tmp_path / "a_eval"), "results.json")))
    assert sorted(result["metrics"]["per_class_accuracy"]) == sorted(subset["classnames"])

    with pytest.raises(UserError, match="evaluation-only test set.*--eval-only --model-dir"):
        target.train()
