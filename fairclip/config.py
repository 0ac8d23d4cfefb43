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
import math
import os.path as osp

from yacs.config import CfgNode as CN

from fairclip.toolbox.errors import UserError

# fairclip.plugin registers our trainer/reader as "fairclip.<Name>" where a host checkout holds <Name>.
ALIAS_PREFIX = "fairclip."


def unaliased(name):
    """A registered trainer/reader name without the plugin's ``fairclip.`` prefix (results, keys, configs)."""
    name = str(name)
    return name[len(ALIAS_PREFIX):] if name.startswith(ALIAS_PREFIX) else name


class RunConfig(CN):
    """A yacs ``CfgNode`` root that finds per-dataset overrides and records the files it merges."""

    @classmethod
    def _decode_cfg_value(cls, value):
        return CN._decode_cfg_value(value)  # nested nodes stay plain CfgNodes (yacs compares node types)

    def merge_from_file(self, cfg_filename):
        # A host checkout's own train.py calls this directly, so its config files get the same checks.
        if osp.isfile(cfg_filename):
            _check_yaml_file(cfg_filename, "config file")
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
    The key is our config stem for our datasets (``stanford_cars``) and the registered name for a dataset
    a host checkout registers (``per_dataset/MyBirds.yaml``). Dataset config files and the overrides
    themselves have none."""
    from fairclip.datasets import key_for

    folder = osp.dirname(str(merged_file))  # as given, so results.json lists the paths the way the run named them
    if osp.basename(osp.abspath(folder)) == "per_dataset" or not cfg.DATASET.NAME:
        return None
    path = osp.join(folder, "per_dataset", key_for(cfg.DATASET.NAME) + ".yaml")
    return path if osp.isfile(path) else None


def yacs_message(exc, cfg=None):
    """The one-line text of a yacs merge error; an unknown key gets the closest known keys of ``cfg``
    (default: this toolbox's full config) as "did you mean ..."."""
    msg = str(exc.args[0]) if exc.args else str(exc)
    if "Non-existent" in msg:  # yacs: "Non-existent config key: X" (files) / "Non-existent key: X" (lists)
        key = msg.split(":", 1)[1].strip()
        close = _close_keys(key, cfg)
        hint = ("did you mean {}?".format(" or ".join(close)) if close else
                "check the spelling; keys are listed in the config dump of any run log")
        return "unknown config key '{}' ({})".format(key, hint)
    return msg


def _all_keys(node, prefix=""):
    for name, value in node.items():
        full = prefix + name
        yield full
        if isinstance(value, CN):
            yield from _all_keys(value, full + ".")


def _close_keys(key, cfg=None, n=2):
    """A few known keys that look like ``key``: another case, a typo of a key beside it (OPTIM.MAX_EPOCHS),
    or the right name at another level (TRAINER.N_CROPS -> TRAINER.FAIR.N_CROPS)."""
    import difflib

    try:
        keys = list(_all_keys(cfg if cfg is not None else get_cfg()))
    except Exception:  # a suggestion must never hide the error itself
        return []
    by_upper = {k.upper(): k for k in keys}
    wanted = key.upper()
    if wanted in by_upper:
        return [by_upper[wanted]]
    parent, _, leaf = wanted.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in by_upper if k.rpartition(".")[0] == parent}
    found = [siblings[m] for m in difflib.get_close_matches(leaf, list(siblings), n=n, cutoff=0.75)]
    found = found or [k for k in by_upper if k.rpartition(".")[2] == leaf][:3]
    found = found or difflib.get_close_matches(wanted, list(by_upper), n=n, cutoff=0.85)
    return [by_upper[k] for k in found]


def merge_config_file(cfg, path, what):
    """Merge the YAML file ``path`` into ``cfg``; a missing file, text that is not UTF-8 YAML, a YAML tag
    that builds Python objects, a top level that is not a mapping, a bad key and a non-finite number are
    one-line ``UserError``s that name ``what`` (e.g. "method config file") and the file."""
    if not path:
        return
    if not osp.isfile(path):
        raise UserError("{} '{}' does not exist; check the path".format(what, path))
    if _already_merged(cfg, path):
        return  # e.g. a per-dataset override also given as --extra-config-file: merged once
    _check_yaml_file(path, what)
    try:
        cfg.merge_from_file(path)
    except (KeyError, AssertionError, ValueError) as exc:
        raise UserError("{} '{}': {}".format(what, path, _one_line(yacs_message(exc)))) from exc
    for key, value in _non_finite(cfg):
        raise UserError("{} '{}': {} = {} must be a finite number; fix the file".format(what, path, key, value))


def _one_line(text, limit=300):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _check_yaml_file(path, what):
    """Parse ``path`` as yacs will (``yaml.safe_load``), turning each way it can fail into one line."""
    import yaml

    where = "{} '{}'".format(what, path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError("{} is UTF-16 text; save it as UTF-8".format(where))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError("{} is not UTF-8 text (byte 0x{:02x} at offset {}); save it as UTF-8".format(
            where, raw[exc.start], exc.start)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        tag = "{}".format(getattr(exc, "problem", "") or exc)
        line = exc.problem_mark.line + 1 if getattr(exc, "problem_mark", None) else "?"
        raise UserError("{} line {}: {}; config files hold plain values only (numbers, strings, lists, "
                        "mappings), remove the tag".format(where, line, _one_line(tag))) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = " (line {}, column {})".format(mark.line + 1, mark.column + 1) if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError("{} is not valid YAML{}: {}; fix the file".format(where, at, _one_line(problem))) from None
    if data is not None and not isinstance(data, dict):
        raise UserError("{} must hold a mapping of config keys (KEY: value), not a {}".format(
            where, type(data).__name__))


def _non_finite(node, prefix=""):
    """``(key, value)`` of every float in ``node`` (a config) that is nan or infinite."""
    for key, value in node.items():
        name = prefix + key
        if isinstance(value, dict):
            yield from _non_finite(value, name + ".")
        elif isinstance(value, float) and not math.isfinite(value):
            yield name, value
        elif isinstance(value, (list, tuple)) and any(isinstance(v, float) and not math.isfinite(v) for v in value):
            yield name, value


def check_loader_keys(cfg):
    """The DataLoader keys every trainer uses, checked before any loader is built (PyTorch would raise a
    traceback): batch sizes >= 1, ``DATALOADER.NUM_WORKERS`` >= 0."""
    for key in ("TRAIN_X", "TRAIN_U", "TEST"):
        size = cfg.DATALOADER[key].BATCH_SIZE
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise UserError("DATALOADER.{}.BATCH_SIZE = {!r} must be a whole number >= 1".format(key, size))
    workers = cfg.DATALOADER.NUM_WORKERS
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise UserError("DATALOADER.NUM_WORKERS = {!r} must be a whole number >= 0 (0: load in the main "
                        "process)".format(workers))


def extend_cfg(cfg):
    """Add the keys of this toolbox (dataset/model level here, per-trainer keys in each trainer)."""
    from fairclip import trainers

    cfg.DATASET.SUBSAMPLE_CLASSES = "all"  # all, base or new (CoOp's base-to-new protocol)
    # Per-class description file ({classname: [sentences]}, CuPL format). Empty: ours, shipped in
    # datasets/descriptions/<dataset key>.json; "cupl": CuPL's GPT-3 descriptions, fetched once with
    # `python -m tools.fetch_descriptions cupl --root DATA` into DATA/descriptions/cupl/.
    cfg.DATASET.DESCRIPTIONS = ""
    # Class-name prompts: "ensemble" (the dataset's CLIP template list), "coop" (CoOp's one zero-shot
    # prompt per dataset), "single" ("a photo of a {}.") or a path to a JSON list of templates with "{}".
    cfg.DATASET.TEMPLATES = "ensemble"
    # Fraction of a train split's images that may be unreadable (skipped and counted) before the run fails.
    cfg.DATASET.MAX_UNREADABLE = 0.01
    # Val/test images are never replaced: an unreadable one fails the run, unless this is True, which
    # leaves unreadable val/test images out and lists them in results.json (protocol.skipped_eval_images).
    cfg.DATASET.SKIP_UNREADABLE_EVAL = False

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
        if osp.basename(osp.dirname(osp.abspath(path))) == unaliased(cfg.TRAINER.NAME):
            return osp.splitext(osp.basename(path))[0]
    return ""


def flat_config(node, prefix=""):
    """``{"OPTIM.LR": 0.002, ...}``: every leaf of a config node under its dotted key (tuples as lists)."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(flat_config(value, prefix + key + "."))
        else:
            out[prefix + key] = _plain(value)
    return out


def _plain(value):
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
