"""Generate the synthetic fine-grained world (SyntheticFG): a target dataset and source-style captioned images.

    python -m tools.make_synthetic --root DATA [--seed 0] [--per-class-train 32 ...]
    python -m tools.make_synthetic --write-texts     # (re)write the committed class list and descriptions

Each class is one combination of a colour (red, orange, blue), a shape (circle, square, triangle) and a
white marking at the shape's centre (dot, ring, cross), e.g. ``orange_square_ring``: 27 classes.
Neighbouring classes differ in one attribute; red and orange are close, and at CLIP's 32-pixel input a
dot, a ring and a cross are 6-13 pixels across, so under the target's noise they are easy to confuse.

Two drawing styles:

* **source**: plain or gradient background, a few clutter strokes, an object near the centre, little
  noise. Image/caption pairs written
  to ``DATA/synthetic_fg/source/`` (``images/*.png`` + ``captions.json``); used only to pretrain the
  tiny CLIP (``tools/pretrain_tiny_clip.py``).
* **target**: the dataset we adapt to: the same kind of scenes through a "different camera" (warm
  tint, lost contrast, strong pixel noise). Written in the DescribableTextures layout:
  ``DATA/synthetic_fg/images/<classname>/<file>.png`` + ``split_zhou_SyntheticFG.json``.

Every image is drawn from its own seeded generator, so the same arguments give byte-identical files.
"""
import argparse
import io
import math
import os
import os.path as osp
import shutil
import sys

import numpy as np
from PIL import Image, ImageDraw

from fairclip.toolbox.errors import UserError, report_error
from fairclip.toolbox.io import atomic_write_json, atomic_write_text

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DATASET_DIR = "synthetic_fg"
SPLIT_FILE = "split_zhou_SyntheticFG.json"
CLASSNAMES_PATH = osp.join(REPO, "datasets", "classnames", "synthetic.txt")
DESCRIPTIONS_PATH = osp.join(REPO, "datasets", "descriptions", "synthetic.json")
IMAGE_SIZE = 64
SUPERSAMPLE = 2  # draw at 2x and downsample, so edges are anti-aliased
FORMAT_VERSION = 1  # bump when the drawing changes, so caches built from older files are not reused

# Attribute vocabulary. Each entry: the word used in the class name and phrases that describe it
# (used for the descriptions and, mixed, for the source captions).
COLOURS = {
    "red": ((205, 45, 40), ["a red body", "a bright red colour", "a red fill"]),
    "orange": ((235, 125, 30), ["an orange body", "a warm orange colour", "an orange fill"]),
    "blue": ((45, 85, 205), ["a blue body", "a deep blue colour", "a blue fill"]),
}
SHAPES = {
    "circle": ["a round outline", "no corners at all", "a smooth curved edge"],
    "square": ["four equal sides", "four right-angled corners", "a square outline"],
    "triangle": ["three straight sides", "three sharp corners", "a pointed top and a flat base"],
}
MARKINGS = {
    "dot": ["a small filled dot at its centre", "one solid white spot in the middle", "a tiny white disc in its middle"],
    "ring": ["a small hollow ring at its centre", "one thin white circle in the middle", "a tiny white loop in its middle"],
    "cross": ["a small cross at its centre", "two short crossing white lines in the middle", "a tiny white plus sign in its middle"],
}

DEFAULTS = dict(seed=0, per_class_train=32, per_class_val=8, per_class_test=24, per_class_source=96, shift=1.0)


class ClassSpec:
    """One class: its attributes and the derived names."""

    def __init__(self, colour, shape, marking):
        self.colour, self.shape, self.marking = colour, shape, marking
        self.name = "{}_{}_{}".format(colour, shape, marking)
        self.display = self.name.replace("_", " ")


def class_specs():
    """All classes in label order (sorted names, as a DescribableTextures-style folder scan gives)."""
    specs = [ClassSpec(c, s, m) for c in COLOURS for s in SHAPES for m in MARKINGS]
    return sorted(specs, key=lambda spec: spec.name)


def _a(phrase):
    """``phrase`` with its indefinite article ("an orange ...", "a red ...")."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def descriptions(spec):
    """Sentences for one class: "A photo of a <display name>, which has <attribute phrase>." and a few combined."""
    colour_ph = COLOURS[spec.colour][1]
    shape_ph = SHAPES[spec.shape]
    mark_ph = MARKINGS[spec.marking]
    head = "A photo of {}, which has ".format(_a(spec.display))
    out = [head + p + "." for p in colour_ph + shape_ph + mark_ph]
    out += [
        head + "{} and {}.".format(shape_ph[0], mark_ph[0]),
        head + "{} and {}.".format(colour_ph[0], shape_ph[1]),
        head + "{}, {} and {}.".format(colour_ph[1], shape_ph[2], mark_ph[1]),
    ]
    return out


def texts_content():
    """(class-name list text, descriptions JSON object) exactly as committed under datasets/."""
    specs = class_specs()
    names = "".join(spec.name + "\n" for spec in specs)
    return names, {spec.name: descriptions(spec) for spec in specs}


def write_texts():
    names, desc = texts_content()
    atomic_write_text(names, CLASSNAMES_PATH)
    atomic_write_json(desc, DESCRIPTIONS_PATH)
    return CLASSNAMES_PATH, DESCRIPTIONS_PATH


def caption(spec, rng):
    """A source caption that names all three attributes, each by its word or by a describing phrase."""
    colour_ph = COLOURS[spec.colour][1]
    shape_ph = SHAPES[spec.shape]
    mark_ph = MARKINGS[spec.marking]
    form = rng.integers(6)
    if form == 0:
        return "a photo of {}.".format(_a(spec.display))
    if form == 1:
        return "{} {} with a {} in the middle.".format(_a(spec.colour), spec.shape, spec.marking)
    if form == 2:
        return "{} {} which has {}.".format(_a(spec.colour), spec.shape, mark_ph[rng.integers(3)])
    if form == 3:
        return "{} shape with {}, which has {}.".format(_a(spec.colour), shape_ph[rng.integers(3)], mark_ph[rng.integers(3)])
    if form == 4:
        return "a {} with {} and {}.".format(spec.shape, colour_ph[rng.integers(3)], mark_ph[rng.integers(3)])
    parts = [colour_ph[rng.integers(3)], shape_ph[rng.integers(3)], mark_ph[rng.integers(3)]]
    order = rng.permutation(3)
    return "an object with {}, {} and {}.".format(*(parts[i] for i in order))


# ----------------------------------------------------------------------------------------------- drawing

def _shape_points(shape, cx, cy, r, angle):
    if shape == "square":
        n, r = 4, r * 1.1  # corners out, so the four shapes look about equally large
        angle += math.pi / 4
    elif shape == "triangle":
        n, r = 3, r * 1.2
        angle -= math.pi / 2  # one corner up
    else:
        raise ValueError(shape)
    return [(cx + r * math.cos(angle + 2 * math.pi * k / n), cy + r * math.sin(angle + 2 * math.pi * k / n)) for k in range(n)]


def _draw_object(draw, spec, cx, cy, r, angle, rgb, mark_rgb, mark):
    if spec.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
    else:
        draw.polygon(_shape_points(spec.shape, cx, cy, r, angle), fill=rgb)
    m = mark * r  # marking radius
    w = max(1.0, 0.11 * r)  # stroke half-width
    if spec.marking == "dot":
        draw.ellipse([cx - m, cy - m, cx + m, cy + m], fill=mark_rgb)
    elif spec.marking == "ring":
        draw.ellipse([cx - m, cy - m, cx + m, cy + m], outline=mark_rgb, width=int(round(2 * w)))
    else:  # cross, turned with the shape
        for a in (angle, angle + math.pi / 2):
            dx, dy = math.cos(a), math.sin(a)
            px, py = -dy * w, dx * w
            draw.polygon([(cx - dx * m + px, cy - dy * m + py), (cx + dx * m + px, cy + dy * m + py),
                          (cx + dx * m - px, cy + dy * m - py), (cx - dx * m - px, cy - dy * m - py)], fill=mark_rgb)


def _jitter(rgb, rng, amount):
    return tuple(int(np.clip(v + rng.integers(-amount, amount + 1), 0, 255)) for v in rgb)


# Drawing styles. Sizes are fractions of the image side; "clutter" is a (min, max) count of random
# strokes; "tint" fixed RGB gains of the style; "cast" the largest random per-image gain change;
# "contrast" the fraction of contrast lost; "noise" the pixel noise std (0-255 scale); "jitter" how far
# the centre may move; "mark" the marking radius relative to the shape. The source style varies
# background and clutter a little (so the tiny CLIP learns some invariance, as a web-trained CLIP
# would); the target style shows the same kind of scenes through a "different camera": warm tint,
# washed out, very noisy. --shift scales the target's tint, cast, contrast loss, noise and clutter.
# The strength was tuned so that zero-shot accuracy lands near 35-55 % and LayerNorm self-training
# gains about 10 points (docs/synthetic.md).
SOURCE_STYLE = dict(gradient=0.5, bg=(90, 240), clutter=(0, 3), cast=0.05, tint=(1.0, 1.0, 1.0), contrast=0.0,
                    noise=3.0, scale=(0.18, 0.36), jitter=0.12, mark=0.55)
TARGET_STYLE = dict(gradient=0.5, bg=(90, 240), clutter=(0, 3), cast=0.06, tint=(1.2, 1.0, 0.7), contrast=0.45,
                    noise=28.0, scale=(0.18, 0.36), jitter=0.12, mark=0.55)


def render(spec, style, rng, shift=1.0):
    """One 64x64 RGB image (uint8 array) of class ``spec`` in ``style`` ("source" or "target")."""
    st = SOURCE_STYLE if style == "source" else TARGET_STYLE
    strength = 1.0 if style == "source" else shift
    S = IMAGE_SIZE * SUPERSAMPLE
    rgb = _jitter(COLOURS[spec.colour][0], rng, 18)
    mark_rgb = _jitter((245, 245, 245), rng, 10)
    angle = rng.uniform(-0.15, 0.15)
    img = _background(rng, S, st, strength)
    r = rng.uniform(*st["scale"]) * S
    if st["jitter"] is None:  # anywhere in the frame
        cx, cy = rng.uniform(1.05 * r, S - 1.05 * r, size=2)
    else:
        cx, cy = S / 2 + rng.uniform(-st["jitter"], st["jitter"], size=2) * S
    _draw_object(ImageDraw.Draw(img), spec, cx, cy, r, angle, rgb, mark_rgb, st["mark"])
    small = np.asarray(img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS), dtype=np.float32)
    # Colour: a fixed tint of the style plus a small random cast per image, then loss of contrast.
    gain = 1.0 + strength * ((np.asarray(st["tint"]) - 1.0) + rng.uniform(-st["cast"], st["cast"], size=3))
    small = small * gain
    small = small + strength * st["contrast"] * (128.0 - small)
    small = small + rng.normal(0.0, strength * st["noise"], small.shape)
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def _background(rng, S, st, strength):
    """Plain colour or a horizontal/vertical gradient between two colours, plus a few clutter strokes."""
    c0 = rng.uniform(*st["bg"], size=3)
    c1 = rng.uniform(*st["bg"], size=3) if rng.uniform() < st["gradient"] else c0
    t = np.linspace(0.0, 1.0, S, dtype=np.float32)
    ramp = t[None, :, None] if rng.integers(2) else t[:, None, None]
    img = Image.fromarray(np.broadcast_to(c0 * (1 - ramp) + c1 * ramp, (S, S, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    lo, hi = st["clutter"]
    for _ in range(int(round(rng.integers(lo, hi + 1) * strength))):
        p = rng.uniform(0, S, size=4)
        col = tuple(int(v) for v in rng.uniform(40, 220, size=3))
        draw.line([(p[0], p[1]), (p[2], p[3])], fill=col, width=int(rng.integers(1, 3)) * SUPERSAMPLE)
    return img


def png_bytes(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=False, compress_level=1)
    return buf.getvalue()


def _rng(seed, domain, class_index, image_index):
    return np.random.default_rng([seed, domain, class_index, image_index])


# ----------------------------------------------------------------------------------------------- writing

def _check_args(args):
    for key in ("per_class_train", "per_class_val", "per_class_test", "per_class_source"):
        if getattr(args, key) < 1:
            raise UserError("--{} is {}; it must be at least 1".format(key.replace("_", "-"), getattr(args, key)))
    if args.seed < 0:
        raise UserError("--seed is {}; use a non-negative integer".format(args.seed))
    if not 0.0 <= args.shift <= 2.0:
        raise UserError("--shift is {}; use a strength between 0 (no tint, clutter or noise) and 2".format(args.shift))


def generate(root, seed=DEFAULTS["seed"], per_class_train=DEFAULTS["per_class_train"],
             per_class_val=DEFAULTS["per_class_val"], per_class_test=DEFAULTS["per_class_test"],
             per_class_source=DEFAULTS["per_class_source"], shift=DEFAULTS["shift"]):
    """Write the world under ``root/synthetic_fg`` (replacing an earlier one) and return that folder.

    Everything is written to a temporary sibling folder first and renamed at the end, so an interrupted
    run never leaves a half-written dataset behind.
    """
    args = argparse.Namespace(seed=seed, per_class_train=per_class_train, per_class_val=per_class_val,
                              per_class_test=per_class_test, per_class_source=per_class_source, shift=shift)
    _check_args(args)
    final = osp.join(root, DATASET_DIR)
    tmp = final + ".tmp-{}".format(os.getpid())
    if osp.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(osp.join(tmp, "images"))
    os.makedirs(osp.join(tmp, "source", "images"))

    specs = class_specs()
    sizes = (("train", per_class_train), ("val", per_class_val), ("test", per_class_test))
    split = {name: [] for name, _ in sizes}
    for label, spec in enumerate(specs):
        os.makedirs(osp.join(tmp, "images", spec.name))
        i = 0
        for split_name, n in sizes:
            for _ in range(n):
                rel = "{}/{}_{:04d}.png".format(spec.name, spec.name, i)
                arr = render(spec, "target", _rng(seed, 1, label, i), shift)
                with open(osp.join(tmp, "images", rel), "wb") as f:
                    f.write(png_bytes(arr))
                split[split_name].append([rel, label, spec.name])
                i += 1

    pairs = []
    for label, spec in enumerate(specs):
        for i in range(per_class_source):
            rng = _rng(seed, 0, label, i)
            rel = "images/{}_{:04d}.png".format(spec.name, i)
            with open(osp.join(tmp, "source", rel), "wb") as f:
                f.write(png_bytes(render(spec, "source", rng)))
            caps = sorted({caption(spec, rng) for _ in range(4)})
            pairs.append({"image": rel, "captions": caps, "group": spec.name})

    atomic_write_json(split, osp.join(tmp, SPLIT_FILE))
    atomic_write_json(pairs, osp.join(tmp, "source", "captions.json"))
    meta = dict(vars(args), format_version=FORMAT_VERSION, image_size=IMAGE_SIZE, classes=[s.name for s in specs],
                styles={"source": SOURCE_STYLE, "target": TARGET_STYLE})
    atomic_write_json(meta, osp.join(tmp, "world.json"))

    if osp.exists(final):
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def main(argv=None):
    p = argparse.ArgumentParser(description="Generate the synthetic fine-grained world (target dataset + source captions).")
    p.add_argument("--root", help="data root; the world is written to ROOT/synthetic_fg (replaced if present)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--per-class-train", type=int, default=DEFAULTS["per_class_train"])
    p.add_argument("--per-class-val", type=int, default=DEFAULTS["per_class_val"])
    p.add_argument("--per-class-test", type=int, default=DEFAULTS["per_class_test"])
    p.add_argument("--per-class-source", type=int, default=DEFAULTS["per_class_source"],
                   help="source-style captioned images per class (for pretraining the tiny CLIP)")
    p.add_argument("--shift", type=float, default=DEFAULTS["shift"],
                   help="strength of the target style's clutter, colour cast and noise (default 1.0)")
    p.add_argument("--write-texts", action="store_true",
                   help="(re)write datasets/classnames/synthetic.txt and datasets/descriptions/synthetic.json")
    args = p.parse_args(argv)
    try:
        if not args.root and not args.write_texts:
            raise UserError("nothing to do: give --root DATA to generate the world and/or --write-texts")
        if args.write_texts:
            for path in write_texts():
                print("wrote {}".format(path))
        if args.root:
            out = generate(args.root, args.seed, args.per_class_train, args.per_class_val, args.per_class_test,
                           args.per_class_source, args.shift)
            print("wrote {} ({} classes)".format(out, len(class_specs())))
    except UserError as exc:
        return report_error(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
