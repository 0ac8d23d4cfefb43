"""Prompt templates per dataset, and the ``DATASET.TEMPLATES`` choice.

* ``ensemble``: the prompt sets of the CLIP paper's zero-shot evaluation (a protocol fact, listed in
  openai/CLIP ``data/prompts.md``; ImageNet's 80 templates are in its
  ``notebooks/Prompt_Engineering_for_ImageNet.ipynb``, and CLIP used them for the ImageNet variants
  too). CLIP did not evaluate CUB; we give it the Birdsnap template (another bird dataset).
  ``synthetic`` is our demo world.
* ``coop``: the one prompt per dataset of CoOp's zero-shot CLIP baseline (``COOP_TEMPLATES``, the
  protocol of CoOp's "zero-shot CLIP" numbers, also UPL's pseudo-labelling prompt). For a dataset CoOp
  does not have (CUB, RESISC45, Birdsnap, synthetic) the rule is the first template of the dataset's
  ``ensemble`` list: CUB and Birdsnap "a photo of a {}, a type of bird.", RESISC45 "satellite imagery of
  {}.".
* ``single``: "a photo of a {}." for every dataset; or the path of a JSON list of templates.
"""
import json
import os.path as osp
import string

from fairclip.toolbox.errors import UserError

TEMPLATES_KEY = "DATASET.TEMPLATES"
SINGLE_TEMPLATE = "a photo of a {}."
TEMPLATES = {}
TEMPLATES["oxford_pets"] = [
    'a photo of a {}, a type of pet.',
]
TEMPLATES["stanford_cars"] = [
    'a photo of a {}.',
    'a photo of the {}.',
    'a photo of my {}.',
    'i love my {}!',
    'a photo of my dirty {}.',
    'a photo of my clean {}.',
    'a photo of my new {}.',
    'a photo of my old {}.',
]
TEMPLATES["fgvc_aircraft"] = [
    'a photo of a {}, a type of aircraft.',
    'a photo of the {}, a type of aircraft.',
]
TEMPLATES["oxford_flowers"] = [
    'a photo of a {}, a type of flower.',
]
TEMPLATES["food101"] = [
    'a photo of {}, a type of food.',
]
TEMPLATES["dtd"] = [
    'a photo of a {} texture.',
    'a photo of a {} pattern.',
    'a photo of a {} thing.',
    'a photo of a {} object.',
    'a photo of the {} texture.',
    'a photo of the {} pattern.',
    'a photo of the {} thing.',
    'a photo of the {} object.',
]
TEMPLATES["eurosat"] = [
    'a centered satellite photo of {}.',
    'a centered satellite photo of a {}.',
    'a centered satellite photo of the {}.',
]
TEMPLATES["ucf101"] = [
    'a photo of a person {}.',
    'a video of a person {}.',
    'a example of a person {}.',
    'a demonstration of a person {}.',
    'a photo of the person {}.',
    'a video of the person {}.',
    'a example of the person {}.',
    'a demonstration of the person {}.',
    'a photo of a person using {}.',
    'a video of a person using {}.',
    'a example of a person using {}.',
    'a demonstration of a person using {}.',
    'a photo of the person using {}.',
    'a video of the person using {}.',
    'a example of the person using {}.',
    'a demonstration of the person using {}.',
    'a photo of a person doing {}.',
    'a video of a person doing {}.',
    'a example of a person doing {}.',
    'a demonstration of a person doing {}.',
    'a photo of the person doing {}.',
    'a video of the person doing {}.',
    'a example of the person doing {}.',
    'a demonstration of the person doing {}.',
    'a photo of a person during {}.',
    'a video of a person during {}.',
    'a example of a person during {}.',
    'a demonstration of a person during {}.',
    'a photo of the person during {}.',
    'a video of the person during {}.',
    'a example of the person during {}.',
    'a demonstration of the person during {}.',
    'a photo of a person performing {}.',
    'a video of a person performing {}.',
    'a example of a person performing {}.',
    'a demonstration of a person performing {}.',
    'a photo of the person performing {}.',
    'a video of the person performing {}.',
    'a example of the person performing {}.',
    'a demonstration of the person performing {}.',
    'a photo of a person practicing {}.',
    'a video of a person practicing {}.',
    'a example of a person practicing {}.',
    'a demonstration of a person practicing {}.',
    'a photo of the person practicing {}.',
    'a video of the person practicing {}.',
    'a example of the person practicing {}.',
    'a demonstration of the person practicing {}.',
]
TEMPLATES["sun397"] = [
    'a photo of a {}.',
    'a photo of the {}.',
]
TEMPLATES["caltech101"] = [
    'a photo of a {}.',
    'a painting of a {}.',
    'a plastic {}.',
    'a sculpture of a {}.',
    'a sketch of a {}.',
    'a tattoo of a {}.',
    'a toy {}.',
    'a rendition of a {}.',
    'a embroidered {}.',
    'a cartoon {}.',
    'a {} in a video game.',
    'a plushie {}.',
    'a origami {}.',
    'art of a {}.',
    'graffiti of a {}.',
    'a drawing of a {}.',
    'a doodle of a {}.',
    'a photo of the {}.',
    'a painting of the {}.',
    'the plastic {}.',
    'a sculpture of the {}.',
    'a sketch of the {}.',
    'a tattoo of the {}.',
    'the toy {}.',
    'a rendition of the {}.',
    'the embroidered {}.',
    'the cartoon {}.',
    'the {} in a video game.',
    'the plushie {}.',
    'the origami {}.',
    'art of the {}.',
    'graffiti of the {}.',
    'a drawing of the {}.',
    'a doodle of the {}.',
]
TEMPLATES["resisc45"] = [
    'satellite imagery of {}.',
    'aerial imagery of {}.',
    'satellite photo of {}.',
    'aerial photo of {}.',
    'satellite view of {}.',
    'aerial view of {}.',
    'satellite imagery of a {}.',
    'aerial imagery of a {}.',
    'satellite photo of a {}.',
    'aerial photo of a {}.',
    'satellite view of a {}.',
    'aerial view of a {}.',
    'satellite imagery of the {}.',
    'aerial imagery of the {}.',
    'satellite photo of the {}.',
    'aerial photo of the {}.',
    'satellite view of the {}.',
    'aerial view of the {}.',
]
TEMPLATES["birdsnap"] = [
    'a photo of a {}, a type of bird.',
]
TEMPLATES["cub"] = list(TEMPLATES["birdsnap"])
TEMPLATES["imagenet"] = [
    'a bad photo of a {}.',
    'a photo of many {}.',
    'a sculpture of a {}.',
    'a photo of the hard to see {}.',
    'a low resolution photo of the {}.',
    'a rendering of a {}.',
    'graffiti of a {}.',
    'a bad photo of the {}.',
    'a cropped photo of the {}.',
    'a tattoo of a {}.',
    'the embroidered {}.',
    'a photo of a hard to see {}.',
    'a bright photo of a {}.',
    'a photo of a clean {}.',
    'a photo of a dirty {}.',
    'a dark photo of the {}.',
    'a drawing of a {}.',
    'a photo of my {}.',
    'the plastic {}.',
    'a photo of the cool {}.',
    'a close-up photo of a {}.',
    'a black and white photo of the {}.',
    'a painting of the {}.',
    'a painting of a {}.',
    'a pixelated photo of the {}.',
    'a sculpture of the {}.',
    'a bright photo of the {}.',
    'a cropped photo of a {}.',
    'a plastic {}.',
    'a photo of the dirty {}.',
    'a jpeg corrupted photo of a {}.',
    'a blurry photo of the {}.',
    'a photo of the {}.',
    'a good photo of the {}.',
    'a rendering of the {}.',
    'a {} in a video game.',
    'a photo of one {}.',
    'a doodle of a {}.',
    'a close-up photo of the {}.',
    'a photo of a {}.',
    'the origami {}.',
    'the {} in a video game.',
    'a sketch of a {}.',
    'a doodle of the {}.',
    'a origami {}.',
    'a low resolution photo of a {}.',
    'the toy {}.',
    'a rendition of the {}.',
    'a photo of the clean {}.',
    'a photo of a large {}.',
    'a rendition of a {}.',
    'a photo of a nice {}.',
    'a photo of a weird {}.',
    'a blurry photo of a {}.',
    'a cartoon {}.',
    'art of a {}.',
    'a sketch of the {}.',
    'a embroidered {}.',
    'a pixelated photo of a {}.',
    'itap of the {}.',
    'a jpeg corrupted photo of the {}.',
    'a good photo of a {}.',
    'a plushie {}.',
    'a photo of the nice {}.',
    'a photo of the small {}.',
    'a photo of the weird {}.',
    'the cartoon {}.',
    'art of the {}.',
    'a drawing of the {}.',
    'a photo of the large {}.',
    'a black and white photo of a {}.',
    'the plushie {}.',
    'a dark photo of a {}.',
    'itap of a {}.',
    'graffiti of the {}.',
    'a toy {}.',
    'itap of my {}.',
    'a photo of a cool {}.',
    'a photo of a small {}.',
    'a tattoo of the {}.',
]
TEMPLATES["synthetic"] = ["a photo of a {}.", "a photo of the {}."]


TEMPLATES["imagenet_a"] = TEMPLATES["imagenet_r"] = list(TEMPLATES["imagenet"])
TEMPLATES["imagenet_sketch"] = TEMPLATES["imagenet_v2"] = list(TEMPLATES["imagenet"])

# CoOp's zero-shot prompt for each dataset CoOp has (a protocol fact: one string per dataset).
COOP_TEMPLATES = {
    "oxford_pets": "a photo of a {}, a type of pet.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food101": "a photo of {}, a type of food.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenet": "a photo of a {}.",
    "imagenet_sketch": "a photo of a {}.",
    "imagenet_v2": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.",
    "imagenet_r": "a photo of a {}.",
}

# How the results table names each template set.
TEMPLATE_SET_NAMES = {
    "ensemble": "CLIP's per-dataset ensemble",
    "coop": "CoOp's per-dataset prompt",
    "single": "'{}'".format(SINGLE_TEMPLATE),
}


def coop_template(key):
    """CoOp's zero-shot prompt for dataset ``key``; for a dataset CoOp does not have, the first template
    of our ``ensemble`` list (the rule stated in the module docstring); None when we know neither."""
    if key in COOP_TEMPLATES:
        return COOP_TEMPLATES[key]
    return TEMPLATES[key][0] if key in TEMPLATES else None


def get_templates(value, key):
    """Templates for dataset ``key`` under ``DATASET.TEMPLATES = value``: "ensemble" (the dataset's
    list), "coop" (CoOp's one prompt), "single" (``SINGLE_TEMPLATE``) or the path of a JSON list of
    strings containing "{}"."""
    value = str(value).strip()
    if value == "single":
        return [SINGLE_TEMPLATE]
    if value in ("ensemble", "coop"):
        if key not in TEMPLATES:
            raise UserError("{} = {}: dataset '{}' is not one of ours, so no template is shipped for it; set {} "
                            "to 'single' or to a JSON file listing templates".format(
                                TEMPLATES_KEY, value, key, TEMPLATES_KEY))
        return list(TEMPLATES[key]) if value == "ensemble" else [coop_template(key)]
    return read_templates_file(value)


def describe_template_set(value):
    """``DATASET.TEMPLATES`` as the results table names it: "coop (CoOp's per-dataset prompt)"."""
    value = str(value)
    return "{} ({})".format(value, TEMPLATE_SET_NAMES[value]) if value in TEMPLATE_SET_NAMES else value


def read_templates_file(path):
    if not osp.isfile(path):
        raise UserError("{} = {!r} is neither 'ensemble', 'coop', 'single' nor an existing JSON file; fix the "
                        "value".format(TEMPLATES_KEY, path))
    from .texts import read_text

    try:
        data = json.loads(read_text(path, "template file"))
    except json.JSONDecodeError as exc:
        raise UserError("template file {} is not valid JSON (line {}: {}); fix {}".format(
            path, exc.lineno, exc.msg, TEMPLATES_KEY)) from None
    if not isinstance(data, list) or not data or not all(isinstance(t, str) for t in data):
        raise UserError("template file {} must hold a non-empty JSON list of strings, e.g. "
                        "[\"a photo of a {{}}.\"]".format(path))
    for t in data:
        why = template_problem(t)
        if why:
            raise UserError("template file {}: template {!r} {}; it must contain '{{}}' exactly once (where the "
                            "class name goes), and a literal brace is written '{{{{' or '}}}}'".format(path, t, why))
    return list(data)


def template_problem(template):
    """None when ``template.format(name)`` puts the name in exactly one place, else why not."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:  # a stray "{" or "}"
        return "has an unmatched brace ({})".format(exc)
    if len(fields) != 1:
        return "has {} replacement fields".format(len(fields))
    parsed = next((spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None)
    if fields[0] != "" or parsed != ("", None):
        return "has the field '{{{}}}' instead of '{{}}'".format(fields[0] + ("!" + parsed[1] if parsed[1] else "")
                                                                   + (":" + parsed[0] if parsed[0] else ""))
    return None
