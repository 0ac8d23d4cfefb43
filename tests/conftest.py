"""Shared fixtures: tiny CLIP checkpoints and isolated caches. CPU only, no network."""
import contextlib
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tests run the built-in engine unless a run asks for Dassl explicitly, never touch the user's caches,
# and cannot reach the network by accident (named CLIP downloads go to a dead local proxy).
os.environ.setdefault("TOOLBOX", "builtin")
os.environ["HTTP_PROXY"] = os.environ["HTTPS_PROXY"] = "http://127.0.0.1:9"
os.environ["http_proxy"] = os.environ["https_proxy"] = "http://127.0.0.1:9"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("fairclip-cache")
    os.environ["FAIRCLIP_CACHE"] = str(cache)
    yield cache


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """Path of a tiny random CLIP saved as a state dict (input resolution 224, patch 32)."""
    from fairclip.tools.make_tiny_clip import save_tiny_clip

    return save_tiny_clip(str(tmp_path_factory.mktemp("clip") / "tiny_clip.pt"), "state_dict")


@pytest.fixture(scope="session")
def tiny_clip_jit(tmp_path_factory):
    """The same tiny CLIP saved as a TorchScript archive (OpenAI's published format)."""
    from fairclip.tools.make_tiny_clip import save_tiny_clip

    return save_tiny_clip(str(tmp_path_factory.mktemp("clip") / "tiny_clip_jit.pt"), "jit")


def run_cli(args, env=None, cwd=REPO, timeout=600):
    """Run a command of the project (e.g. ``[sys.executable, "train.py", ...]``) in a subprocess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("PYTHONPATH", REPO)
    return subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def train_py(*args, env=None):
    return run_cli([sys.executable, os.path.join(REPO, "train.py"), *map(str, args)], env=env)


@contextlib.contextmanager
def log_tee_undone():
    """For train.py run in this process: its tee of ``sys.stdout`` into the run's log.txt is closed and the
    console put back on the way out, whatever happened."""
    stdout = sys.stdout
    try:
        yield
    finally:
        if sys.stdout is not stdout:
            sys.stdout.close()
            sys.stdout = stdout


def one_line(exc_info):
    """The message of a ``pytest.raises`` result, checked to be a single line."""
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def unit_vectors(*shape, seed=0):
    """Random unit vectors along the last dimension, from their own generator seeded with ``seed``."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def make_dataset_cfg(root, key, *opts):
    """The default config extended with our keys, for dataset ``key`` under ``root``, plus ``opts``."""
    from fairclip.toolbox import get_cfg_default

    from fairclip.datasets import DATASET_KEYS
    from fairclip.config import extend_cfg

    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = DATASET_KEYS[key]
    cfg.merge_from_list(list(opts))
    return cfg


def build_dataset(root, key, *opts):
    """The registered reader of dataset ``key`` built on ``make_dataset_cfg(root, key, *opts)``."""
    from fairclip.toolbox import DATASET_REGISTRY

    from fairclip.datasets import DATASET_KEYS

    return DATASET_REGISTRY.get(DATASET_KEYS[key])(make_dataset_cfg(root, key, *opts))


def trainer_cfg(trainer, dataset, root, out, *opts, seed=1, method=None, extra_config_files=()):
    """``train.setup_cfg`` for an in-process run as the scripts start it: ``--trainer trainer`` on
    ``configs/datasets/<dataset>.yaml`` and ``configs/trainers/<method or trainer>/vit_b32.yaml``, then
    ``extra_config_files`` and the ``opts`` KEY VALUE pairs."""
    from train import build_parser, setup_cfg

    argv = ["--root", root, "--trainer", trainer, "--seed", str(seed), "--output-dir", out,
            "--dataset-config-file", os.path.join(REPO, "configs", "datasets", dataset + ".yaml"),
            "--config-file", os.path.join(REPO, "configs", "trainers", method or trainer, "vit_b32.yaml")]
    for path in extra_config_files:
        argv += ["--extra-config-file", path]
    return setup_cfg(build_parser().parse_args(argv + [str(o) for o in opts]))


def build_seeded(cfg):
    """The trainer of ``cfg``, built after seeding as train.py does."""
    from fairclip.toolbox import build_trainer, set_random_seed

    set_random_seed(cfg.SEED)
    return build_trainer(cfg)


def small_fair_cfg(root, clip_path, out, *opts):
    """FAIR on the miniature Oxford Pets tree, small enough for a CPU test: 1 epoch, batch 4, 3 crops."""
    return trainer_cfg(
        "FAIR", "oxford_pets", root, out, "MODEL.BACKBONE.PATH", clip_path, "DATALOADER.NUM_WORKERS", "0",
        "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "OPTIM.MAX_EPOCH", "1", "TRAINER.FAIR.N_CROPS", "3",
        "TRAINER.FAIR.TOP_K", "2", "VERBOSE", "False", *opts)


@pytest.fixture(scope="module")
def mini_pets(tmp_path_factory):
    """A miniature Oxford Pets tree (3 classes x 6 images, 40 px), one per test module."""
    from fairclip.tools.make_miniature_data import make_oxford_pets

    root = tmp_path_factory.mktemp("data")
    make_oxford_pets(str(root), classes=3, per_class=6, size=40)
    return str(root)


@pytest.fixture(scope="module")
def mini_dtd(tmp_path_factory):
    """A miniature DTD tree (3 classes x 6 images, 40 px), one per test module."""
    from fairclip.tools.make_miniature_data import make_dtd

    root = tmp_path_factory.mktemp("data")
    make_dtd(str(root), classes=3, per_class=6, size=40)
    return str(root)


@pytest.fixture(scope="module")
def mini_pets_dtd(tmp_path_factory):
    """One data root holding a miniature Oxford Pets and a miniature DTD (3 classes x 4 images, 32 px each),
    one per test module."""
    from fairclip.tools.make_miniature_data import make_dtd, make_oxford_pets

    root = str(tmp_path_factory.mktemp("data"))
    make_oxford_pets(root, classes=3, per_class=4, size=32)
    make_dtd(root, classes=3, per_class=4, size=32)
    return root
