"""Download public class-description files into the data root (user-run; never shipped with the repository).

    python -m tools.fetch_descriptions cupl --root DATA [--datasets oxford_pets dtd ...] [--force]

``cupl``: CuPL's GPT-3 descriptions (Pratt et al., "What does a platypus look like?", ICCV 2023), the
``*_prompts_full.json`` files of github.com/sarahpratt/CuPL at a fixed commit (ImageNet: its
``imagenet_prompts/CuPL_image_prompts.json``). Each file is saved as downloaded under
``DATA/descriptions/cupl/raw/`` and rewritten as ``DATA/descriptions/cupl/<dataset key>.json`` keyed by
our class names (CuPL spells some classes differently: case, punctuation, word order, a few other
names), which ``DATASET.DESCRIPTIONS cupl`` reads. Default: every dataset CuPL covers (not EuroSAT, CUB
or the synthetic world). ImageNet's class names come from ``DATA/imagenet/classnames.txt`` when it
exists; otherwise the file keeps CuPL's names (the CLIP names CoOp's classnames.txt uses too) and the
run matches them. Files already there are kept unless ``--force``. Without network access the tool
stops with one line naming the URL and what to do.
"""
import argparse
import json
import os
import os.path as osp
import re
import sys
import urllib.error
import urllib.request

from fairclip.datasets.texts import (
    CUPL_BASE_URL, CUPL_FILES, cupl_descriptions_path, normalize_name, read_classnames, read_description_json,
)
from fairclip.toolbox.errors import UserError, report_error
from fairclip.toolbox.io import atomic_file, atomic_write_json

TIMEOUT_S = 60
# Our class name -> CuPL's key, where the two differ by more than case, punctuation or word order.
CUPL_ALIASES = {
    "caltech101": {"face": "centered face", "car_side": "side of a car", "cougar_body": "body of a cougar cat",
                   "cougar_face": "face of a cougar cat", "crocodile_head": "head of a crocodile",
                   "flamingo_head": "head of a flamingo", "snoopy": "snoopy (cartoon beagle)",
                   "yin_yang": "yin and yang symbol"},
    "oxford_flowers": {"pink-yellow dahlia": "pink and yellow dahlia", "lotus lotus": "lotus",
                       "ball moss": "air plant"},
    "stanford_cars": {"2012 Ram C/V Cargo Van Minivan": "Ram CV Cargo Van Minivan 2012"},
    "ucf101": {"Handstand_Pushups": "Hand Stand Pushups"},
}


def word_bag(name):
    """Case-, punctuation- and order-insensitive form: 'outdoor apartment_building' and 'apartment building
    outdoor' agree, as do "Cooper's Hawk" and 'Coopers Hawk'."""
    name = re.sub(r"['\u2019]", "", name.lower())
    return tuple(sorted(re.sub(r"[^a-z0-9]+", " ", name).split()))


def match_classes(data, classnames, key, source):
    """``{our class name: sentences}`` in label order from CuPL's ``data``; a one-line error names the
    classes that found no entry."""
    aliases = CUPL_ALIASES.get(key, {})
    by_norm, by_bag = {}, {}
    for name in data:
        by_norm.setdefault(normalize_name(name), []).append(name)
        by_bag.setdefault(word_bag(name), []).append(name)
    out, missing = {}, []
    for cname in classnames:
        wanted = aliases.get(cname, cname)
        found = [wanted] if wanted in data else by_norm.get(normalize_name(wanted)) or by_bag.get(word_bag(wanted))
        if not found or len(found) != 1:
            missing.append(cname)
            continue
        out[cname] = [s for s in data[found[0]] if s.strip()]
    if missing:
        raise UserError("{}: no CuPL entry for {} of {} classes of {} (first: {}); the file differs from the one "
                        "this tool knows ({})".format(source, len(missing), len(classnames), key,
                                                     ", ".join(missing[:5]), CUPL_BASE_URL))
    return out


def imagenet_classnames(root):
    """ImageNet's class names from ``DATA/imagenet/classnames.txt`` (``<wnid> <name>`` lines), or None."""
    from fairclip.datasets.imagenet import read_classnames as read_wnid_names

    path = osp.join(root, "imagenet", "classnames.txt")
    if not osp.isfile(path):
        return None
    return list(read_wnid_names(path, "ImageNet").values())


def download(url, dest):
    """``url`` -> ``dest`` (atomically); a one-line error when it cannot be fetched."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, atomic_file(dest, "wb") as f:
            while True:
                chunk = response.read(1 << 20)
                if not chunk:
                    break
                f.write(chunk)
    except urllib.error.HTTPError as exc:
        raise UserError("cannot download {}: HTTP {} {}; check the URL (--base-url)".format(
            url, exc.code, exc.reason)) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError("cannot download {} ({}): no network? Run this where the network is reachable (a proxy "
                        "goes in HTTPS_PROXY), or save the file by hand as {} and run again".format(
                            url, reason, dest)) from None


def fetch_cupl(root, keys, base_url=CUPL_BASE_URL, force=False, log=print):
    """Download and convert CuPL's files of ``keys``; returns the written description paths."""
    written = []
    for key in keys:
        rel = CUPL_FILES[key]
        raw = osp.join(root, "descriptions", "cupl", "raw", osp.basename(rel))
        out = cupl_descriptions_path(root, key)
        if osp.isfile(out) and not force:
            log("[cupl] {}: {} exists (--force to fetch again)".format(key, out))
            written.append(out)
            continue
        if force or not osp.isfile(raw):
            url = base_url.rstrip("/") + "/" + rel
            log("[cupl] {}: downloading {}".format(key, url))
            os.makedirs(osp.dirname(raw), exist_ok=True)
            download(url, raw)
        data = read_description_json(raw)
        classnames = imagenet_classnames(root) if key == "imagenet" else read_classnames(key)
        if classnames is None:
            log("[cupl] imagenet: {} not found; keeping CuPL's class names".format(
                osp.join(root, "imagenet", "classnames.txt")))
            converted = data
        else:
            converted = match_classes(data, classnames, key, raw)
        atomic_write_json(converted, out)
        log("[cupl] {}: {} classes, {} descriptions -> {}".format(
            key, len(converted), sum(len(v) for v in converted.values()), out))
        written.append(out)
    return written


def build_parser():
    p = argparse.ArgumentParser(prog="python -m tools.fetch_descriptions", description=__doc__.split("\n\n")[0])
    p.add_argument("source", choices=["cupl"], help="which public descriptions")
    p.add_argument("--root", required=True, help="the data root (DATA); files go to ROOT/descriptions/cupl/")
    p.add_argument("--datasets", nargs="+", metavar="KEY", help="dataset keys (default: all that CuPL covers: {})"
                   .format(" ".join(sorted(CUPL_FILES))))
    p.add_argument("--base-url", default=CUPL_BASE_URL, help="where the files are served (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="download and convert again")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        keys = args.datasets or sorted(CUPL_FILES)
        unknown = [k for k in keys if k not in CUPL_FILES]
        if unknown:
            raise UserError("--datasets {}: CuPL published no descriptions for these; choose from {}".format(
                " ".join(unknown), " ".join(sorted(CUPL_FILES))))
        paths = fetch_cupl(args.root, keys, args.base_url, args.force)
        print("done: {} file(s); use them with DATASET.DESCRIPTIONS cupl (and --root {})".format(len(paths), args.root))
    except UserError as exc:
        return report_error(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
