"""Check a prepared dataset root: every reader builds, split sizes match the published ones, no image
is missing, and (with --decode) every image decodes.

    python -m tools.verify_datasets --root DATA [--datasets k1 k2 ...] [--decode] [--ignore-sizes]

Prints one table row per dataset and exits with status 1 if any dataset fails (2 on bad arguments).
Without --datasets, the datasets whose folder exists under DATA are checked and the others are listed
as absent. Nothing is written: a split the reader would build on first use is built in memory only.
"""
import argparse
import contextlib
import io
import os.path as osp
import sys

from tabulate import tabulate

from fairclip.toolbox import DATASET_REGISTRY, get_cfg_default
from fairclip.toolbox.errors import UserError, report_error

from fairclip import datasets
from fairclip.datasets.common import collect_missing_images, dataset_root, scan_unreadable

# Published split sizes (CoOp's split files; ours for CUB200/RESISC45/Birdsnap, see DATASETS.md).
# "trainval": only train+val is fixed; "*_max": an upper bound (Birdsnap images come from Flickr).
PUBLISHED = {
    "oxford_pets": {"train": 2944, "val": 736, "test": 3669, "classes": 37},
    "stanford_cars": {"train": 6509, "val": 1635, "test": 8041, "classes": 196},
    "fgvc_aircraft": {"train": 3334, "val": 3333, "test": 3333, "classes": 100},
    "oxford_flowers": {"train": 4093, "val": 1633, "test": 2463, "classes": 102},
    "food101": {"train": 50500, "val": 20200, "test": 30300, "classes": 101},
    "dtd": {"train": 2820, "val": 1128, "test": 1692, "classes": 47},
    "eurosat": {"train": 13500, "val": 5400, "test": 8100, "classes": 10},
    "ucf101": {"train": 7639, "val": 1898, "test": 3783, "classes": 101},
    "sun397": {"train": 15880, "val": 3970, "test": 19850, "classes": 397},
    "caltech101": {"train": 4128, "val": 1649, "test": 2465, "classes": 100},
    "imagenet": {"train": 1281167, "val": 50000, "test": 50000, "classes": 1000},
    "cub": {"trainval": 5994, "test": 5794, "classes": 200},
    "resisc45": {"train": 15750, "val": 6300, "test": 9450, "classes": 45},
    "birdsnap": {"trainval_max": 47386, "test_max": 2443, "classes": 500},
    # ImageNet's test sets: every image is the test split (the reader also serves it as train and val)
    "imagenet_v2": {"train": 10000, "val": 10000, "test": 10000, "classes": 1000},
    "imagenet_sketch": {"train": 50889, "val": 50889, "test": 50889, "classes": 1000},
    "imagenet_a": {"train": 7500, "val": 7500, "test": 7500, "classes": 200},
    "imagenet_r": {"train": 30000, "val": 30000, "test": 30000, "classes": 200},
}


def expected_text(key):
    pub = PUBLISHED.get(key)
    if not pub:
        return "-"
    if "train" in pub:
        return "{}/{}/{}".format(pub["train"], pub["val"], pub["test"])
    if "trainval" in pub:
        return "{} (train+val)/{}".format(pub["trainval"], pub["test"])
    return "<={}/<={}".format(pub["trainval_max"], pub["test_max"])


def size_problems(key, counts, num_classes):
    """(failures, warnings), each a list of one-line notes, comparing counts with the published sizes."""
    pub = PUBLISHED.get(key)
    if not pub:
        return [], []
    diffs, warns = [], []
    if num_classes != pub["classes"]:
        diffs.append("{} classes (expected {})".format(num_classes, pub["classes"]))
    trainval = counts["train"] + counts["val"]
    if "train" in pub:
        diffs += ["{} {} (expected {})".format(counts[s], s, pub[s]) for s in ("train", "val", "test")
                  if counts[s] != pub[s]]
    elif "trainval" in pub:
        if trainval != pub["trainval"]:
            diffs.append("{} train+val (expected {})".format(trainval, pub["trainval"]))
        if counts["test"] != pub["test"]:
            diffs.append("{} test (expected {})".format(counts["test"], pub["test"]))
    elif trainval > pub["trainval_max"] or counts["test"] > pub["test_max"]:
        diffs.append("more images than the official lists hold")
    elif trainval < pub["trainval_max"] or counts["test"] < pub["test_max"]:
        warns.append("{} of {} listed images are present (Flickr download losses)".format(
            trainval + counts["test"], pub["trainval_max"] + pub["test_max"]))
    fails = ["sizes differ from the published split: " + ", ".join(diffs)] if diffs else []
    return fails, warns


def make_cfg(root, name):
    from fairclip.config import extend_cfg

    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.DATASET.ROOT = root
    cfg.DATASET.NAME = name
    return cfg


def check_dataset(root, key, decode=False, ignore_sizes=False, workers=4):
    """Build the reader of ``key`` and return one result row (a dict)."""
    name = datasets.DATASET_KEYS[key]
    row = {"dataset": key, "train": "-", "val": "-", "test": "-", "expected": expected_text(key),
           "classes": "-", "missing": 0, "unreadable": "-", "status": "OK", "notes": []}
    cfg = make_cfg(root, name)
    dataset = None
    with collect_missing_images() as missing, contextlib.redirect_stdout(io.StringIO()):
        try:  # the reader's progress prints are hidden: the table says it all
            dataset = DATASET_REGISTRY.get(name)(cfg)
        except UserError as exc:
            row["notes"].append(str(exc))
        except (ValueError, AssertionError, KeyError, OSError) as exc:
            row["notes"].append("{}: {}".format(type(exc).__name__, exc))
    row["missing"] = len(missing)
    if missing:
        source, path = missing[0]
        row["notes"].insert(0, "{} image(s) missing, first {} ({})".format(len(missing), path, source))
    if dataset is None or missing:
        row["status"] = "FAIL"
        return row

    counts = {"train": len(dataset.train_x), "val": len(dataset.val or []), "test": len(dataset.test)}
    row.update(counts)
    row["classes"] = dataset.num_classes
    fails, warns = size_problems(key, counts, dataset.num_classes)
    if ignore_sizes:
        warns, fails = warns + fails, []
    row["notes"] += fails + warns
    if fails:
        row["status"] = "FAIL"
    elif warns:
        row["status"] = "WARN"

    if decode:
        items = list(dataset.train_x) + list(dataset.val or []) + list(dataset.test)
        bad = scan_unreadable(items, workers=workers)
        distinct = len({item.impath for item in items})
        row["unreadable"] = len(bad)
        if bad:
            row["notes"].append("{} unreadable image(s), first {} ({})".format(len(bad), bad[0][0], bad[0][1]))
            too_many = len(bad) > float(cfg.DATASET.MAX_UNREADABLE) * distinct
            row["status"] = "FAIL" if too_many else ("WARN" if row["status"] == "OK" else row["status"])
    return row


def dataset_folder_exists(root, key):
    return osp.isdir(osp.join(root, DATASET_REGISTRY.get(datasets.DATASET_KEYS[key]).dataset_dir))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="the dataset root (DATASET.ROOT)")
    parser.add_argument("--datasets", nargs="+", default=None,
                        help="dataset keys to check (default: every dataset whose folder exists)")
    parser.add_argument("--decode", action="store_true", help="decode every image (slow on full datasets)")
    parser.add_argument("--ignore-sizes", action="store_true",
                        help="report size differences from the published splits as warnings (e.g. miniature trees)")
    parser.add_argument("--workers", type=int, default=4, help="threads for --decode (default 4)")
    args = parser.parse_args(argv)

    try:
        root = dataset_root(make_cfg(args.root, ""))
        unknown = [k for k in args.datasets or [] if k not in datasets.DATASET_KEYS]
        if unknown:
            raise UserError("unknown dataset key(s) {}; choose from {}".format(
                ", ".join(unknown), ", ".join(datasets.DATASET_KEYS)))
    except UserError as exc:
        return report_error(exc)

    keys = args.datasets or list(datasets.DATASET_KEYS)
    rows = []
    for key in keys:
        if args.datasets is None and not dataset_folder_exists(root, key):
            rows.append({"dataset": key, "train": "", "val": "", "test": "", "expected": expected_text(key),
                         "classes": "", "missing": "", "unreadable": "", "status": "absent", "notes": []})
            continue
        print("Checking {} ...".format(key), flush=True)
        rows.append(check_dataset(root, key, decode=args.decode, ignore_sizes=args.ignore_sizes,
                                  workers=args.workers))

    columns = ["dataset", "train", "val", "test", "expected", "classes", "missing", "unreadable", "status"]
    print()
    print(tabulate([[row[c] for c in columns] for row in rows], headers=columns))
    notes = [(row["dataset"], note) for row in rows for note in row["notes"]]
    if notes:
        print()
        for key, note in notes:
            print("{}: {}".format(key, note))
    failed = [row["dataset"] for row in rows if row["status"] == "FAIL"]
    if failed:
        print("\n{} dataset(s) failed: {}".format(len(failed), ", ".join(failed)))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
