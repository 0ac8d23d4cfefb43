"""Download CoOp's public split files (and the two small metadata files CoOp hosts) with gdown.

    python -m tools.fetch_splits --root DATA [--datasets k1 k2 ...] [--force] [--list]

Files already present are kept unless --force. Each file is downloaded to a temporary name, checked
(a split file must be a JSON object with train/val/test lists) and only then moved into place, so an
interrupted or failed download leaves nothing behind. CUB200, RESISC45 and Birdsnap have no public
split: their readers build ours on first use (DATASETS.md). FGVCAircraft uses its official lists.
"""
import argparse
import json
import os
import os.path as osp
import sys
import tempfile

from fairclip.toolbox.errors import UserError, report_error

# dataset key -> [(folder under DATA, file name, Google Drive file id)]; ids from CoOp's DATASETS.md.
FILES = {
    "oxford_pets": [("oxford_pets", "split_zhou_OxfordPets.json", "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs")],
    "stanford_cars": [("stanford_cars", "split_zhou_StanfordCars.json", "1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT")],
    "oxford_flowers": [("oxford_flowers", "split_zhou_OxfordFlowers.json", "1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT"),
                       ("oxford_flowers", "cat_to_name.json", "1AkcxCXeK_RCGCEC_GvmWxjcjaNhu-at0")],
    "food101": [("food-101", "split_zhou_Food101.json", "1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl")],
    "dtd": [("dtd", "split_zhou_DescribableTextures.json", "1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x")],
    "eurosat": [("eurosat", "split_zhou_EuroSAT.json", "1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o")],
    "ucf101": [("ucf101", "split_zhou_UCF101.json", "1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y")],
    "sun397": [("sun397", "split_zhou_SUN397.json", "1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq")],
    "caltech101": [("caltech-101", "split_zhou_Caltech101.json", "1hyarUivQE36mY6jSomru6Fjd-JzwcCzN")],
    "imagenet": [("imagenet", "classnames.txt", "1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF")],
}


def drive_url(file_id):
    return "https://drive.google.com/file/d/{}/view".format(file_id)


def check_download(path, fname):
    """Raise UserError unless the downloaded file looks like what it should be."""
    with open(path, "rb") as f:
        head = f.read(512).lstrip()
    if head.startswith(b"<"):
        raise UserError("Google Drive returned a web page instead of {} (quota or access limits)".format(fname))
    if fname.endswith(".json"):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError("the downloaded {} is not valid JSON ({})".format(fname, exc)) from None
        if fname.startswith("split_") and not (
                isinstance(data, dict) and all(isinstance(data.get(s), list) and data[s] for s in ("train", "val", "test"))):
            raise UserError("the downloaded {} lacks non-empty train/val/test lists".format(fname))
    elif os.path.getsize(path) == 0:
        raise UserError("the downloaded {} is empty".format(fname))


def fetch_one(root, folder, fname, file_id, force=False):
    """Download one file into ``root/folder``; returns "present", "fetched"."""
    dest = osp.join(root, folder, fname)
    if osp.isfile(dest) and not force:
        return "present"
    try:
        import gdown
    except ImportError:
        raise UserError("gdown is not installed; pip install gdown, or download {} by hand to {}".format(
            drive_url(file_id), dest)) from None
    # The temporary file sits in the root, so a failed download creates no dataset folder either.
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + fname + "-", dir=root)
    os.close(fd)
    try:
        try:
            result = gdown.download(id=file_id, output=tmp, quiet=True)
        except Exception as exc:  # gdown raises requests/its own errors when offline or blocked
            raise UserError("could not download {} ({}: {}); check the internet connection or download {} by "
                            "hand to {}".format(fname, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "",
                                                drive_url(file_id), dest)) from None
        if result is None:
            raise UserError("could not download {}; download {} by hand to {}".format(fname, drive_url(file_id), dest))
        check_download(tmp, fname)
        os.makedirs(osp.dirname(dest), exist_ok=True)
        os.replace(tmp, dest)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    return "fetched"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", help="the dataset root (DATASET.ROOT)")
    parser.add_argument("--datasets", nargs="+", default=None, help="dataset keys (default: all with a public file)")
    parser.add_argument("--force", action="store_true", help="download again even when the file exists")
    parser.add_argument("--list", action="store_true", help="only list the files and their Google Drive links")
    args = parser.parse_args(argv)
    keys = args.datasets or list(FILES)
    try:
        unknown = [k for k in keys if k not in FILES]
        if unknown:
            raise UserError("no public split file for {}; choose from {} (CUB200/RESISC45/Birdsnap splits are "
                            "built by the readers, see DATASETS.md)".format(", ".join(unknown), ", ".join(FILES)))
        if args.list:
            for key in keys:
                for folder, fname, file_id in FILES[key]:
                    print("{:15s} {}/{:38s} {}".format(key, folder, fname, drive_url(file_id)))
            return 0
        if not args.root:
            raise UserError("--root is required (the folder that holds the dataset folders)")
        root = osp.abspath(osp.expanduser(args.root))
        if not osp.isdir(root):
            raise UserError("dataset root {} does not exist; create it first (see DATASETS.md)".format(root))
        for key in keys:
            for folder, fname, file_id in FILES[key]:
                state = fetch_one(root, folder, fname, file_id, force=args.force)
                print("{:15s} {:9s} {}".format(key, state, osp.join(root, folder, fname)))
    except UserError as exc:
        return report_error(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
