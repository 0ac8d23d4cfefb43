"""The run configuration: Dassl's defaults + this toolbox's keys, and how YAML files are merged.

Used by our ``train.py`` and, through ``fairclip.plugin``, by a host checkout's own ``setup_cfg``:

* ``extend_cfg(cfg)`` adds the dataset/model/run keys of this toolbox and every trainer's
  ``TRAINER.<NAME>`` node (each trainer module's ``add_config``), before any file is merged, so an
  unknown key fails;
* a config whose root is a ``RunConfig`` merges, after any method config file, the per-dataset override
  that lives beside it (``<dir>/per_dataset/<dataset key>.yaml``, for the dataset already merged), and
  records every merged file in ``RUN.CONFIG_FILES`` (results.json lists them). CoOp's ``setup_cfg`` merges
  the dataset file first, then the method file, then the command line, so an override lands between the
  method file and the user's KEY VALUE pairs, as it does in our scripts.
"""
import os.path as osp

from yacs.config import CfgNode as CN

from fairclip.toolbox.errors import UserError


class RunConfig(CN):
    """A yacs ``CfgNode`` root that finds per-dataset overrides and records the files it merges."""

    @classmethod
    def _decode_cfg_value(cls, value):
        return CN._decode_cfg_value(value)  # nested nodes stay plain CfgNodes (yacs compares node types)

    def merge_from_file(self, cfg_filename):
        super().merge_from_file(cfg_filename)
        _record_file(self, cfg_filename)
        override = per_dataset_override(self, cfg_filename)
        if override and not _already_merged(self, override):
            print("Per-dataset override: {}".format(override))
            merge_config_file(self, override, "per-dataset override")


def as_run_config(cfg):
    """Make ``cfg`` (a yacs root node) a ``RunConfig`` in place and return it."""
    object.__setattr__(cfg, "__class__", RunConfig)  # yacs refuses non-config attribute values
    return cfg


def _record_file(cfg, path):
    if "RUN" in cfg and "CONFIG_FILES" in cfg.RUN:
        cfg.RUN.CONFIG_FILES.append(str(path))


def _already_merged(cfg, path):
    if "RUN" not in cfg:
        return False
    return any(osp.abspath(p) == osp.abspath(path) for p in cfg.RUN.CONFIG_FILES)


def per_dataset_override(cfg, merged_file):
    """``<dir of merged_file>/per_dataset/<key>.yaml`` for the dataset in ``cfg`` when it exists, else None.
    Dataset config files and the overrides themselves have none."""
    from fairclip.datasets import DATASET_KEYS

    folder = osp.dirname(str(merged_file))  # as given, so results.json lists the paths the way the run named them
    if osp.basename(osp.abspath(folder)) == "per_dataset":
        return None
    keys = [k for k, name in DATASET_KEYS.items() if name == cfg.DATASET.NAME]
    if not keys:
        return None
    path = osp.join(folder, "per_dataset", keys[0] + ".yaml")
    return path if osp.isfile(path) else None


def yacs_message(exc):
    """The one-line text of a yacs merge error."""
    msg = str(exc.args[0]) if exc.args else str(exc)
    if "Non-existent" in msg:  # yacs: "Non-existent config key: X" (files) / "Non-existent key: X" (lists)
        key = msg.split(":", 1)[1].strip()
        return "unknown config key '{}' (check the spelling; keys are listed in the config dump of any run log)".format(key)
    return msg


def merge_config_file(cfg, path, what):
    """Merge the YAML file ``path`` into ``cfg``; a missing file or a bad key is a one-line ``UserError``
    that names ``what`` (e.g. "method config file") and the file."""
    if not path:
        return
    if not osp.isfile(path):
        raise UserError("{} '{}' does not exist; check the path".format(what, path))
    try:
        cfg.merge_from_file(path)
    except (KeyError, AssertionError, ValueError) as exc:
        raise UserError("{} '{}': {}".format(what, path, yacs_message(exc))) from exc


def extend_cfg(cfg):
    """Add the keys of this toolbox (dataset/model level here, per-trainer keys in each trainer)."""
    from fairclip import trainers

    cfg.DATASET.SUBSAMPLE_CLASSES = "all"  # all, base or new (CoOp's base-to-new protocol)
    # Per-class description file ({classname: [sentences]}, CuPL format). Empty: ours, shipped in
    # datasets/descriptions/<dataset key>.json; "cupl": CuPL's GPT-3 descriptions, fetched once with
    # `python -m tools.fetch_descriptions cupl --root DATA` into DATA/descriptions/cupl/.
    cfg.DATASET.DESCRIPTIONS = ""
    # Class-name prompts: "ensemble" (the dataset's template list), "single" ("a photo of a {}."),
    # or a path to a JSON list of templates containing "{}".
    cfg.DATASET.TEMPLATES = "ensemble"
    # Fraction of a split's images that may be unreadable (skipped and counted) before the run fails.
    cfg.DATASET.MAX_UNREADABLE = 0.01

    cfg.MODEL.BACKBONE.PATH = ""  # local CLIP file (JIT archive or state dict); overrides NAME
    cfg.MODEL.BACKBONE.DOWNLOAD_ROOT = ""  # where named weights are downloaded; "" = ~/.cache/clip
    cfg.MODEL.TEXT_CACHE_DIR = ""  # text-feature cache; "" = $FAIRCLIP_CACHE or ~/.cache/fairclip/text

    # Speed (docs/speed.md). Views made on the device from a decode-once uint8 cache, for trainers that
    # list their views (FAIR; the CLIP test view of any trainer with the standard test transform):
    # auto = when running on CUDA, always = also on CPU (slow; tests), never = the CPU PIL path only.
    cfg.DATALOADER.GPU_VIEWS = "auto"
    cfg.DATALOADER.DECODED_CACHE = "disk"  # where decoded images live: disk (memory-mapped, reused) | memory
    cfg.DATALOADER.DECODED_CACHE_DIR = ""  # "" = $FAIRCLIP_CACHE/decoded or ~/.cache/fairclip/decoded
    cfg.DATALOADER.DECODED_CACHE_SIDE = 256  # images are cached with the shorter side at most this (pixels)

    cfg.TRAINER.WRITE_RESULTS = True  # write results.json after the final test
    cfg.TRAINER.COMPILE = False  # torch.compile the CLIP image tower (first steps slower, later ones faster)
    if "RUN" not in cfg:
        cfg.RUN = CN()
    cfg.RUN.CFG_NAME = ""  # config name recorded in results.json (scripts set it; else derived)
    cfg.RUN.CONFIG_FILES = []  # every YAML merged into this run, in order (filled as they merge)

    trainers.add_trainer_configs(cfg)
    return as_run_config(cfg)


def get_cfg():
    """The backend's default config extended with this toolbox's keys, as a ``RunConfig``."""
    from fairclip.toolbox import get_cfg_default

    return extend_cfg(get_cfg_default())


def config_name(cfg):
    """The name results.json records for the method config: ``RUN.CFG_NAME`` when set, else the stem of
    the merged file that sits in a folder named after the trainer (``configs/trainers/FAIR/vit_b32.yaml``
    gives ``vit_b32``), else ""."""
    if cfg.RUN.CFG_NAME:
        return cfg.RUN.CFG_NAME
    for path in reversed(list(cfg.RUN.CONFIG_FILES)):
        if osp.basename(osp.dirname(osp.abspath(path))) == cfg.TRAINER.NAME:
            return osp.splitext(osp.basename(path))[0]
    return ""
