"""Prompt templates per dataset, and the ``DATASET.TEMPLATES`` choice.

The per-dataset lists are the prompt sets of the CLIP paper's zero-shot evaluation (a protocol fact,
listed in openai/CLIP ``data/prompts.md``; ImageNet's 80 templates are in its
``notebooks/Prompt_Engineering_for_ImageNet.ipynb``). CLIP did not evaluate CUB; we give it the
Birdsnap template (another bird dataset). ``synthetic`` is our demo world.
"""
import json
import os.path as osp

from fairclip.toolbox.errors import UserError

TEMPLATES_KEY = "DATASET.TEMPLATES"
SINGLE_TEMPLATE = "a photo of a {}."
# One hand-written template per dataset: the prompts of CoOp's zero-shot baseline and of UPL's pseudo-labels
# (their CUSTOM_TEMPLATES). Datasets they did not use take the first template of their CLIP list.
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
}
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


def get_templates(value, key):
    """Templates for dataset ``key`` under ``DATASET.TEMPLATES = value``: "ensemble" (the dataset's
    list), "coop" (the dataset's hand-written template, ``COOP_TEMPLATES``), "single"
    (``SINGLE_TEMPLATE``) or the path of a JSON list of strings containing "{}"."""
    value = str(value).strip()
    if value == "single":
        return [SINGLE_TEMPLATE]
    if value == "coop":
        if key in COOP_TEMPLATES:
            return [COOP_TEMPLATES[key]]
        return get_templates("ensemble", key)[:1]
    if value == "ensemble":
        if key not in TEMPLATES:
            raise UserError("{} = ensemble: no template list for dataset '{}' (known: {}); use 'single' or a "
                            "JSON file".format(TEMPLATES_KEY, key, ", ".join(sorted(TEMPLATES))))
        return list(TEMPLATES[key])
    return read_templates_file(value)


def read_templates_file(path):
    if not osp.isfile(path):
        raise UserError("{} = {!r} is neither 'ensemble', 'single' nor an existing JSON file; fix the "
                        "value".format(TEMPLATES_KEY, path))
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise UserError("template file {} is not valid JSON (line {}: {}); fix {}".format(
            path, exc.lineno, exc.msg, TEMPLATES_KEY)) from None
    if not isinstance(data, list) or not data or not all(isinstance(t, str) for t in data):
        raise UserError("template file {} must hold a non-empty JSON list of strings, e.g. "
                        "[\"a photo of a {{}}.\"]".format(path))
    bad = [t for t in data if t.count("{}") != 1]
    if bad:
        raise UserError("template file {}: template {!r} must contain '{{}}' exactly once (where the class "
                        "name goes)".format(path, bad[0]))
    return list(data)
