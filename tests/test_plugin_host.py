"""``import fairclip.plugin`` inside a CoOp-style host checkout.

A stub host is written to a temp folder: its own top-level ``datasets`` and ``trainers`` packages (a
reader ``HostBirds``, a trainer ``HostPrompt``, and a ``Food101`` reader whose name we also register), a
``train.py`` with CoOp's ``setup_cfg`` (get_cfg_default, the host's extend_cfg, dataset file, method file,
reset_cfg, KEY VALUE pairs) plus the one plugin line, and configs of its own with a per-dataset override.
One subprocess runs FAIR on the host's reader and our ZeroshotCLIP on our miniature Oxford Pets through
that train.py, on the built-in backend (and on real Dassl when ``FAIRCLIP_DASSL_PATH`` names a
Dassl.pytorch checkout).
"""
import json
import os
import os.path as osp
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, run_cli

HOST_DASSL = '''\
"""The host's Dassl: real Dassl, or (TOOLBOX=builtin) the built-in mirror the suite runs on."""
import os

if os.environ.get("TOOLBOX") == "builtin":
    from fairclip.toolbox import (DATASET_REGISTRY, TRAINER_REGISTRY, DatasetBase, Datum, TrainerX,
                                  build_trainer, get_cfg_default, set_random_seed, setup_logger)
else:
    from dassl.config import get_cfg_default
    from dassl.data.datasets import DATASET_REGISTRY, DatasetBase, Datum
    from dassl.engine import TRAINER_REGISTRY, TrainerX, build_trainer
    from dassl.utils import set_random_seed, setup_logger
'''

HOST_BIRDS = '''\
import os
import os.path as osp

from host_dassl import DATASET_REGISTRY, DatasetBase, Datum


@DATASET_REGISTRY.register()
class HostBirds(DatasetBase):
    """<root>/host_birds/<class>/*.jpg: the last image of each class is val and test."""

    def __init__(self, cfg):
        folder = osp.join(cfg.DATASET.ROOT, "host_birds")
        train, test = [], []
        for label, name in enumerate(sorted(os.listdir(folder))):
            files = sorted(os.listdir(osp.join(folder, name)))
            items = [Datum(impath=osp.join(folder, name, f), label=label, classname=name) for f in files]
            train += items[:-1]
            test += items[-1:]
        super().__init__(train_x=train, val=test, test=test)
'''

HOST_FOOD = '''\
from host_dassl import DATASET_REGISTRY, DatasetBase


@DATASET_REGISTRY.register()
class Food101(DatasetBase):
    """The host's own reader under a name we register too (never built here)."""
'''

HOST_TRAINER = '''\
from host_dassl import TRAINER_REGISTRY, TrainerX


@TRAINER_REGISTRY.register()
class HostPrompt(TrainerX):
    """The host's method (never built here)."""
'''

HOST_TRAIN = '''\
import argparse

import torch

from host_dassl import build_trainer, get_cfg_default, set_random_seed, setup_logger

# custom
import datasets.host_birds
import datasets.food101
import trainers.host_prompt

import fairclip.plugin  # noqa: F401  (the one added line)


def reset_cfg(cfg, args):
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    if args.seed:
        cfg.SEED = args.seed
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer


def extend_cfg(cfg):
    from yacs.config import CfgNode as CN

    cfg.TRAINER.HOSTPROMPT = CN()
    cfg.TRAINER.HOSTPROMPT.N_CTX = 4
    cfg.DATASET.SUBSAMPLE_CLASSES = "all"


def setup_cfg(args):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    if args.dataset_config_file:
        cfg.merge_from_file(args.dataset_config_file)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    reset_cfg(cfg, args)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    return cfg


def main(args):
    cfg = setup_cfg(args)
    if cfg.SEED >= 0:
        set_random_seed(cfg.SEED)
    setup_logger(cfg.OUTPUT_DIR)
    trainer = build_trainer(cfg)
    if args.eval_only:
        trainer.load_model(args.model_dir, epoch=args.load_epoch)
        trainer.test()
        return
    trainer.train()


def build_parser():
    parser = argparse.ArgumentParser()
    for flag in ("--root", "--output-dir", "--config-file", "--dataset-config-file", "--trainer", "--model-dir"):
        parser.add_argument(flag, type=str, default="")
    parser.add_argument("--seed", type=int, default=-1)
    parser.add_argument("--load-epoch", type=int)
    parser.add_argument("--eval-only", action="store_true")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER)
    return parser


if __name__ == "__main__":
    main(build_parser().parse_args())
'''

# Runs both jobs through the host's train.py in one process, then writes what the registries hold to
# report.json (not stdout: Dassl's logger closes the console when a second run replaces it).
DRIVER = '''\
import json, sys
import train

for argv in json.loads(sys.argv[1]):
    train.main(train.build_parser().parse_args(argv))
from host_dassl import DATASET_REGISTRY, TRAINER_REGISTRY
import datasets, trainers, fairclip.datasets
with open("report.json", "w") as f:
    json.dump({
    "datasets_pkg": datasets.__file__, "trainers_pkg": trainers.__file__, "ours_pkg": fairclip.datasets.__file__,
    "trainers": TRAINER_REGISTRY.registered_names(),
    "Food101": DATASET_REGISTRY.get("Food101").__module__,
    "fairclip.Food101": DATASET_REGISTRY.get("fairclip.Food101").__module__,
    "HostBirds": DATASET_REGISTRY.get("HostBirds").__module__,
    }, f)
'''

BIRDS = ["blue_tit", "red_kite", "song_thrush"]


def write(path, text):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def make_host(folder):
    for rel, text in (("host_dassl.py", HOST_DASSL), ("train.py", HOST_TRAIN), ("run_jobs.py", DRIVER),
                      ("datasets/__init__.py", ""), ("datasets/host_birds.py", HOST_BIRDS),
                      ("datasets/food101.py", HOST_FOOD), ("trainers/__init__.py", ""),
                      ("trainers/host_prompt.py", HOST_TRAINER),
                      ("configs/datasets/host_birds.yaml", 'DATASET:\n  NAME: "HostBirds"\n'),
                      # a FAIR config of the host's own, with a per-dataset override for its reader
                      ("configs/trainers/FAIR/tiny.yaml", "OPTIM:\n  NAME: adamw\n  LR: 0.0001\n  MAX_EPOCH: 3\n"
                       "DATALOADER:\n  TRAIN_X:\n    BATCH_SIZE: 4\n  NUM_WORKERS: 0\n"),
                      ("configs/trainers/FAIR/per_dataset/HostBirds.yaml",
                       "OPTIM:\n  MAX_EPOCH: 1\nTRAINER:\n  FAIR:\n    N_CROPS: 2\n    TOP_K: 1\n")):
        write(osp.join(folder, rel), text)
    rng = np.random.default_rng(0)
    for name in BIRDS:
        for j in range(3):
            path = osp.join(folder, "data", "host_birds", name, "{}.jpg".format(j))
            os.makedirs(osp.dirname(path), exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    write(osp.join(folder, "bird_descriptions.json"),
          json.dumps({b: ["a small bird called {}.".format(b.replace("_", " ")), "a {} in a tree.".format(b)]
                      for b in BIRDS}))


def backends():
    out = [pytest.param("builtin", id="builtin")]
    dassl = os.environ.get("FAIRCLIP_DASSL_PATH", "")
    out.append(pytest.param("dassl", id="dassl", marks=pytest.mark.skipif(
        not osp.isdir(osp.join(dassl, "dassl")), reason="set FAIRCLIP_DASSL_PATH to a Dassl.pytorch checkout")))
    return out


@pytest.mark.parametrize("backend", backends())
def test_fair_and_zeroshot_run_from_a_coop_style_host(backend, tmp_path, mini_pets, tiny_clip):
    host = str(tmp_path / "host")
    make_host(host)
    fair_out, zs_out = str(tmp_path / "fair"), str(tmp_path / "zs")
    common = ["MODEL.BACKBONE.PATH", tiny_clip, "VERBOSE", "False"]
    fair_dataset = osp.join(host, "configs", "datasets", "host_birds.yaml")
    fair_method = osp.join(host, "configs", "trainers", "FAIR", "tiny.yaml")
    zs_dataset = osp.join(REPO, "configs", "datasets", "oxford_pets.yaml")
    zs_method = osp.join(REPO, "configs", "trainers", "ZeroshotCLIP", "vit_b32.yaml")
    jobs = [
        ["--root", osp.join(host, "data"), "--seed", "1", "--trainer", "FAIR", "--output-dir", fair_out,
         "--dataset-config-file", fair_dataset, "--config-file", fair_method,
         "DATASET.DESCRIPTIONS", osp.join(host, "bird_descriptions.json"), "DATASET.TEMPLATES", "single", *common],
        ["--root", mini_pets, "--seed", "1", "--trainer", "ZeroshotCLIP", "--output-dir", zs_out,
         "--dataset-config-file", zs_dataset, "--config-file", zs_method, "--eval-only",
         "DATASET.TEMPLATES", "coop", "DATALOADER.NUM_WORKERS", "0", *common],
    ]
    env = {"TOOLBOX": backend, "PYTHONPATH": os.pathsep.join(
        ([os.environ["FAIRCLIP_DASSL_PATH"]] if backend == "dassl" else []) + [REPO])}
    res = run_cli([sys.executable, "run_jobs.py", json.dumps(jobs)], env=env, cwd=host)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    report = json.load(open(osp.join(host, "report.json")))

    # the host's packages are the host's, ours live under fairclip; both sets of names are registered
    assert report["datasets_pkg"] == osp.join(host, "datasets", "__init__.py")
    assert report["trainers_pkg"] == osp.join(host, "trainers", "__init__.py")
    assert report["ours_pkg"] == osp.join(REPO, "datasets", "__init__.py")
    assert {"HostPrompt", "FAIR", "ZeroshotCLIP", "CuPL", "WCA", "UPL", "MUST", "DPA"} <= set(report["trainers"])
    assert report["HostBirds"] == "datasets.host_birds"
    assert report["Food101"] == "datasets.food101"  # the host keeps its name ...
    assert report["fairclip.Food101"] == "fairclip.datasets.food101"  # ... and ours is registered beside it

    fair = json.load(open(osp.join(fair_out, "results.json")))
    override = osp.join(osp.dirname(fair_method), "per_dataset", "HostBirds.yaml")
    assert fair["config_files"] == [fair_dataset, fair_method, override]
    assert fair["trainer"] == "FAIR" and fair["dataset"] == "HostBirds" and fair["cfg"] == "tiny"
    assert fair["protocol"]["epochs"] == 1  # the override was merged after the method file
    assert fair["protocol"]["toolbox_backend"] == backend
    assert sorted(fair["metrics"]["per_class_accuracy"]) == BIRDS

    zs = json.load(open(osp.join(zs_out, "results.json")))
    assert zs["config_files"] == [zs_dataset, zs_method]
    assert zs["trainer"] == "ZeroshotCLIP" and zs["dataset"] == "OxfordPets"
    assert zs["protocol"]["text"] == {"templates": "coop"}


def test_plugin_aliases_are_our_datasets_and_trainers():
    """``fairclip.<Name>`` (the plugin's name for ours where the host holds <Name>) reads as <Name>."""
    from fairclip import datasets
    from fairclip.config import unaliased

    assert datasets.key_for("fairclip.OxfordPets") == "oxford_pets" and datasets.is_ours("fairclip.OxfordPets")
    assert unaliased("fairclip.ZeroshotCLIP") == "ZeroshotCLIP" and unaliased("HostBirds") == "HostBirds"
    assert datasets.key_for("HostBirds") == "HostBirds" and not datasets.is_ours("HostBirds")


def test_a_hosts_dataset_needs_templates_and_descriptions_given():
    from fairclip import datasets
    from fairclip.config import get_cfg
    from fairclip.toolbox.errors import UserError

    cfg = get_cfg()
    cfg.DATASET.NAME = "HostBirds"
    for value in ("ensemble", "coop"):
        cfg.DATASET.TEMPLATES = value
        with pytest.raises(UserError, match="'HostBirds' is not one of ours.*set DATASET.TEMPLATES to 'single' or"):
            datasets.templates_for(cfg)
    with pytest.raises(UserError, match="'HostBirds' is not one of our datasets.*set DATASET.DESCRIPTIONS"):
        datasets.descriptions_path(cfg)
    cfg.DATASET.TEMPLATES, cfg.DATASET.DESCRIPTIONS = "single", "/some/birds.json"
    assert datasets.templates_for(cfg) == ["a photo of a {}."]
    assert datasets.descriptions_path(cfg) == "/some/birds.json"


def test_a_hosts_own_merge_from_file_gets_the_yaml_checks(tmp_path):
    """The host's train.py calls ``cfg.merge_from_file`` itself; a tag that builds objects is refused there too."""
    from fairclip.config import get_cfg
    from fairclip.toolbox.errors import UserError

    bad = tmp_path / "method.yaml"
    bad.write_text("OPTIM:\n  LR: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(UserError, match=r"config file '.*method.yaml' line 2: .*remove the tag"):
        get_cfg().merge_from_file(str(bad))
