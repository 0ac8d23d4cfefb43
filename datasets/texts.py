"""Class-name lists and per-class description files (the text side of every dataset).

* ``datasets/classnames/<key>.txt``: the class names a reader produces, in label order, one per line.
* ``datasets/descriptions/<key>.json``: ``{classname: [sentences]}`` (the CuPL format); any CuPL-style
  file can be loaded with :func:`load_descriptions`, also when its keys are spelled slightly differently.

No torch at import: tools and tests use this module without loading a model.
"""
import json
import os
import os.path as osp
import re

from fairclip.toolbox.errors import UserError

HERE = osp.dirname(osp.abspath(__file__))
CLASSNAMES_DIR = osp.join(HERE, "classnames")
DESCRIPTIONS_DIR = osp.join(HERE, "descriptions")

# The config key that points at a description file (fairclip.config.extend_cfg); named in error messages.
DESCRIPTIONS_KEY = "DATASET.DESCRIPTIONS"


# CuPL's published GPT-3 descriptions (Pratt et al., ICCV 2023; github.com/sarahpratt/CuPL at the commit
# below), per dataset key: the file in that repository. ``python -m tools.fetch_descriptions cupl --root
# DATA`` downloads them and writes ``DATA/descriptions/cupl/<key>.json`` keyed by our class names
# (``DATASET.DESCRIPTIONS cupl`` reads those). CuPL has no file for EuroSAT, CUB or the synthetic world.
CUPL_COMMIT = "719619c829792ff8f37298266e941b7f077c7f5c"
CUPL_BASE_URL = "https://raw.githubusercontent.com/sarahpratt/CuPL/" + CUPL_COMMIT
CUPL_FILES = {
    "birdsnap": "all_prompts/full_prompts/bird_prompts_full.json",
    "caltech101": "all_prompts/full_prompts/cal_prompts_full.json",
    "dtd": "all_prompts/full_prompts/texture_prompts_full.json",
    "fgvc_aircraft": "all_prompts/full_prompts/airplane_prompts_full.json",
    "food101": "all_prompts/full_prompts/food_prompts_full.json",
    "imagenet": "imagenet_prompts/CuPL_image_prompts.json",
    "oxford_flowers": "all_prompts/full_prompts/flower_prompts_full.json",
    "oxford_pets": "all_prompts/full_prompts/pets_prompts_full.json",
    "resisc45": "all_prompts/full_prompts/res45_prompts_full.json",
    "stanford_cars": "all_prompts/full_prompts/cars_prompts_full.json",
    "sun397": "all_prompts/full_prompts/sun_prompts_full.json",
    "ucf101": "all_prompts/full_prompts/ucf_prompts_full.json",
}
CUPL = "cupl"  # the DATASET.DESCRIPTIONS shorthand


def cupl_descriptions_path(root, key):
    """Where ``tools.fetch_descriptions cupl`` writes CuPL's descriptions of dataset ``key`` under ``root``."""
    return osp.join(root, "descriptions", CUPL, key + ".json")


def resolve_descriptions(value, root, key):
    """The description file of ``DATASET.DESCRIPTIONS`` = ``value`` for dataset ``key`` (data root
    ``root``): empty = ours, ``cupl`` = CuPL's fetched file (a clear error when CuPL has none or it was not
    fetched yet), anything else = a path."""
    if not value:
        return default_descriptions_path(key)
    if value != CUPL:
        return value
    if key not in CUPL_FILES:
        raise UserError("{} cupl: CuPL published no descriptions for '{}' (it has: {}); leave {} empty for ours "
                        "or give a file path".format(DESCRIPTIONS_KEY, key, ", ".join(sorted(CUPL_FILES)),
                                                     DESCRIPTIONS_KEY))
    path = cupl_descriptions_path(root, key)
    if not osp.isfile(path):
        raise UserError("{} cupl: {} does not exist; fetch CuPL's files once with `python -m "
                        "tools.fetch_descriptions cupl --root {}` (needs the network)".format(
                            DESCRIPTIONS_KEY, path, root))
    return path


def description_source(value, path, key):
    """What a run's descriptions are, for results and tables: ``ours`` (the shipped file), ``cupl`` or
    ``file`` (any other path)."""
    if value == CUPL:
        return CUPL
    if osp.normpath(osp.abspath(path)) == osp.normpath(default_descriptions_path(key)):
        return "ours"
    return "file"


def read_text(path, what):
    """The text of ``path`` decoded as UTF-8 (a UTF-8 byte-order mark is dropped). A UTF-16/32 file or bytes
    that are not UTF-8 (latin-1, cp1252, ...) are a one-line ``UserError`` naming ``what`` and the file."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError("{} {} is UTF-16 text; save it as UTF-8".format(what, path))
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError("{} {} is not UTF-8 text (byte 0x{:02x} at offset {}, e.g. latin-1); save it as "
                        "UTF-8".format(what, path, raw[exc.start], exc.start)) from None


def classnames_path(key):
    return osp.join(CLASSNAMES_DIR, key + ".txt")


def default_descriptions_path(key):
    """The description file we ship for dataset ``key`` (it may not exist yet)."""
    return osp.join(DESCRIPTIONS_DIR, key + ".json")


def available_classname_keys():
    """Dataset keys that have a class-name list, sorted."""
    if not osp.isdir(CLASSNAMES_DIR):
        return []
    return sorted(f[: -len(".txt")] for f in os.listdir(CLASSNAMES_DIR) if f.endswith(".txt"))


def display_name(classname):
    """The name as written in a sentence: ``sea_horse`` -> ``sea horse``."""
    return classname.replace("_", " ")


def normalize_name(name):
    """Spelling-insensitive form used to match description keys: case, ``_``, ``-`` and spaces unified."""
    return " ".join(re.sub(r"[_\-\s]+", " ", name).lower().split())


def read_classnames_file(path):
    """Read a class-name list (one name per line, label order). Blank lines and duplicates are errors."""
    if not osp.isfile(path):
        raise UserError("class-name list {} does not exist; create it with one class name per line".format(path))
    lines = read_text(path, "class-name list").split("\n")
    while lines and lines[-1].strip() == "":
        lines.pop()
    names = [line.rstrip("\r") for line in lines]
    seen = set()
    for i, name in enumerate(names, 1):
        if not name.strip():
            raise UserError("{} line {}: empty class name; remove the blank line".format(path, i))
        if name != name.strip():
            raise UserError("{} line {}: class name {!r} has leading/trailing spaces; strip them".format(path, i, name))
        if name in seen:
            raise UserError("{} line {}: class name {!r} appears twice; each class once".format(path, i, name))
        seen.add(name)
    if not names:
        raise UserError("class-name list {} is empty; write one class name per line".format(path))
    return names


def read_classnames(key):
    """The class names of dataset ``key`` in label order, from ``datasets/classnames/<key>.txt``."""
    path = classnames_path(key)
    if not osp.isfile(path):
        have = ", ".join(available_classname_keys()) or "none"
        raise UserError(
            "no class-name list for dataset '{}': {} does not exist (available: {})".format(key, path, have)
        )
    return read_classnames_file(path)


def read_description_json(path):
    """Parse a description file into a dict, with one-line errors for a missing file or bad JSON."""
    if not osp.isfile(path):
        raise UserError(
            "description file {} does not exist; fix {} (empty = the shipped datasets/descriptions/<dataset>.json)".format(
                path, DESCRIPTIONS_KEY
            )
        )
    text = read_text(path, "description file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            "description file {} is not valid JSON (line {}, column {}: {}); fix the file".format(
                path, exc.lineno, exc.colno, exc.msg
            )
        ) from None
    if not isinstance(data, dict):
        raise UserError(
            "description file {} must hold a JSON object {{classname: [sentences]}}, not a {}".format(
                path, type(data).__name__
            )
        )
    for name, sentences in data.items():
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise UserError(
                "description file {}: class {!r} must map to a list of strings (sentences), got {}".format(
                    path, name, _describe(sentences)
                )
            )
    return data


def _describe(value):
    if isinstance(value, list):
        bad = next(v for v in value if not isinstance(v, str))
        return "a list containing a {}".format(type(bad).__name__)
    return "a {}".format(type(value).__name__)


def load_descriptions(path, classnames):
    """Sentences per class, in label order: a list (one entry per class) of lists of strings.

    Keys are matched exactly first, then by :func:`normalize_name`, so CuPL files whose keys differ in
    case, ``_``/``-``/space load unchanged. Extra keys are ignored; blank sentences are dropped.
    """
    data = read_description_json(path)
    by_norm = {}
    for name in data:
        by_norm.setdefault(normalize_name(name), []).append(name)

    result, missing = [], []
    for cname in classnames:
        if cname in data:
            key = cname
        else:
            candidates = by_norm.get(normalize_name(cname), [])
            if len(candidates) > 1:
                raise UserError(
                    "description file {}: class {!r} matches several keys ({}) once case, '_', '-' and spaces "
                    "are ignored; keep one of them".format(path, cname, ", ".join(repr(c) for c in candidates))
                )
            if not candidates:
                missing.append(cname)
                continue
            key = candidates[0]
        sentences = [s for s in data[key] if s.strip()]
        if not sentences:
            raise UserError(
                "description file {}: class {!r} has no sentences (empty list); add at least one".format(path, key)
            )
        result.append(sentences)

    if missing:
        raise UserError(
            "description file {} lacks {} of {} classes (first {}: {}); add them or fix {}".format(
                path, len(missing), len(classnames), min(10, len(missing)), ", ".join(missing[:10]), DESCRIPTIONS_KEY
            )
        )
    return result
