"""Dataset readers. Importing this package imports every reader module in it, which registers each
reader class in ``toolbox.DATASET_REGISTRY`` (as CoOp's train.py does by importing each file).

``DATASET_KEYS`` maps a config-file stem (``configs/datasets/<key>.yaml``, ``datasets/classnames/<key>.txt``,
``datasets/descriptions/<key>.json``) to the registered reader name.

Our trainers also run on a dataset that only a host checkout registers (``fairclip.plugin``): its key is
its registered name, and as nothing is shipped for it, ``DATASET.TEMPLATES`` (``single`` or a JSON file)
and, for the methods that read descriptions, ``DATASET.DESCRIPTIONS`` must be given.
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
    # evaluation-only targets (CoOp's domain-generalisation protocol: adapt on ImageNet, test on these)
    "imagenet_a": "ImageNetA",
    "imagenet_r": "ImageNetR",
    "imagenet_sketch": "ImageNetSketch",
    "imagenet_v2": "ImageNetV2",
}

_NOT_READERS = {"common", "texts", "templates", "decoded_cache"}

READER_MODULES = [
    importlib.import_module("{}.{}".format(__name__, info.name))
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name)
    if not info.name.startswith("_") and info.name not in _NOT_READERS
]


def is_ours(registered_name):
    """Whether ``registered_name`` is one of our readers (also as ``fairclip.<Name>``, see fairclip.plugin)."""
    from fairclip.config import unaliased

    return unaliased(registered_name) in DATASET_KEYS.values()


def key_for(registered_name):
    """Config stem of a registered reader: ``key_for("StanfordCars") == "stanford_cars"`` (also for
    ``fairclip.StanfordCars``). A dataset that is not ours (registered by a host checkout) is its own key.
    (A host's own reader under one of our names, e.g. CoOp's ``OxfordPets``, gets our key: the same
    dataset, class names and texts.)"""
    from fairclip.config import unaliased

    for key, name in DATASET_KEYS.items():
        if name == unaliased(registered_name):
            return key
    return registered_name


def descriptions_path(cfg):
    """The description file a run uses: ``DATASET.DESCRIPTIONS``, or ours for the dataset."""
    from .texts import DESCRIPTIONS_KEY, default_descriptions_path

    if cfg.DATASET.DESCRIPTIONS:
        return cfg.DATASET.DESCRIPTIONS
    if not is_ours(cfg.DATASET.NAME):
        raise UserError("DATASET.NAME {!r} is not one of our datasets, so no descriptions are shipped for it; set "
                        "{} to a CuPL-format JSON file ({{classname: [sentences]}})".format(
                            cfg.DATASET.NAME, DESCRIPTIONS_KEY))
    return default_descriptions_path(key_for(cfg.DATASET.NAME))


def templates_for(cfg):
    """The prompt templates a run uses (``DATASET.TEMPLATES``: ensemble, coop, single or a JSON file)."""
    from .templates import get_templates

    return get_templates(cfg.DATASET.TEMPLATES, key_for(cfg.DATASET.NAME))
