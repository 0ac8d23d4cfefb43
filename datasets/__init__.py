"""Dataset readers. Importing this package imports every reader module in it, which registers each
reader class in ``toolbox.DATASET_REGISTRY`` (as CoOp's train.py does by importing each file).

``DATASET_KEYS`` maps a config-file stem (``configs/datasets/<key>.yaml``, ``datasets/classnames/<key>.txt``,
``datasets/descriptions/<key>.json``) to the registered reader name.
"""
import importlib
import pkgutil

from fairclip.toolbox.errors import UserError

DATASET_KEYS = {
    "oxford_pets": "OxfordPets",
    "stanford_cars": "StanfordCars",
    "fgvc_aircraft": "FGVCAircraft",
    "oxford_flowers": "OxfordFlowers",
    "food101": "Food101",
    "dtd": "DescribableTextures",
    "eurosat": "EuroSAT",
    "ucf101": "UCF101",
    "sun397": "SUN397",
    "caltech101": "Caltech101",
    "imagenet": "ImageNet",
    "cub": "CUB200",
    "resisc45": "RESISC45",
    "birdsnap": "Birdsnap",
    "synthetic": "SyntheticFG",
}

_NOT_READERS = {"common", "texts", "templates", "decoded_cache"}

READER_MODULES = [
    importlib.import_module("{}.{}".format(__name__, info.name))
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name)
    if not info.name.startswith("_") and info.name not in _NOT_READERS
]


def key_for(registered_name):
    """Config stem of a registered reader: ``key_for("StanfordCars") == "stanford_cars"``."""
    for key, name in DATASET_KEYS.items():
        if name == registered_name:
            return key
    raise UserError("DATASET.NAME = {!r} is not one of our datasets ({})".format(
        registered_name, ", ".join(DATASET_KEYS.values())))


def descriptions_path(cfg):
    """The description file a run uses: ``DATASET.DESCRIPTIONS`` (a path, or ``cupl`` for CuPL's files
    fetched into ``DATASET.ROOT/descriptions/cupl/``), or ours for the dataset when empty."""
    from .texts import resolve_descriptions

    return resolve_descriptions(cfg.DATASET.DESCRIPTIONS, cfg.DATASET.ROOT, key_for(cfg.DATASET.NAME))


def description_source(cfg):
    """``ours``, ``cupl`` or ``file``: where the run's descriptions come from (results.json, tables)."""
    from .texts import description_source as source

    return source(cfg.DATASET.DESCRIPTIONS, descriptions_path(cfg), key_for(cfg.DATASET.NAME))


def templates_for(cfg):
    """The prompt templates a run uses (``DATASET.TEMPLATES``: ensemble, single or a JSON file)."""
    from .templates import get_templates

    return get_templates(cfg.DATASET.TEMPLATES, key_for(cfg.DATASET.NAME))
