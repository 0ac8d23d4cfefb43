"""Birdsnap 1.1 (500 North-American bird species): ``birdsnap/{species.txt, images.txt, test_images.txt,
download/images/<dir>/<file>.jpg}`` (the layout the official ``get_birdsnap.py`` produces).

CoOp has no split for Birdsnap; ours (``split_zhou_Birdsnap.json``, built on first use): the images of
``test_images.txt`` are the test split; of the others, a seeded 20% per species is val, the rest
train. The assignment is made on the full official list, so it does not depend on which Flickr
downloads succeeded; images absent from ``download/images`` are then left out (and counted).
"""
import os.path as osp

from fairclip.toolbox import DATASET_REGISTRY
from fairclip.toolbox.errors import UserError

from .common import SplitJsonDataset, require_file, split_trainval


@DATASET_REGISTRY.register()
class Birdsnap(SplitJsonDataset):
    dataset_dir = "birdsnap"
    image_subdir = "download/images"
    split_file = "split_zhou_Birdsnap.json"

    def build_split(self):
        species = self.read_table("species.txt", ("id", "common"))
        cnames = {}
        for row in species:
            if not row["id"].isdigit() or int(row["id"]) < 1:
                raise UserError("{}: species id {!r} is not a positive integer".format(self.path("species.txt"), row["id"]))
            cnames[row["id"]] = row["common"]
        test_paths = {row["path"] for row in self.read_table("test_images.txt", ("path",))}
        trainval, test = [], []
        for row in self.read_table("images.txt", ("path", "species_id")):
            if row["species_id"] not in cnames:
                raise UserError("{}: species_id {} of {} is not in species.txt".format(
                    self.path("images.txt"), row["species_id"], row["path"]))
            entry = (osp.join(self.image_dir, row["path"]), int(row["species_id"]) - 1, cnames[row["species_id"]])
            (test if row["path"] in test_paths else trainval).append(entry)
        train, val = split_trainval(trainval, self.name, p_val=0.2)

        splits = [[e for e in part if osp.isfile(e[0])] for part in (train, val, test)]
        listed = len(train) + len(val) + len(test)
        present = sum(len(part) for part in splits)
        if present < listed:
            print("Birdsnap: {} of the {} listed images are not in {} (failed Flickr downloads); they are left "
                  "out of the split".format(listed - present, listed, self.image_dir))
        return tuple(splits)

    def path(self, filename):
        return osp.join(self.dataset_dir, filename)

    def read_table(self, filename, needed):
        """Tab-separated file with a header line -> list of {field: value} (only ``needed`` fields)."""
        path = require_file(self.path(filename), self.name, "annotation file")
        with open(path, encoding="utf-8") as f:
            lines = [line.rstrip("\r\n") for line in f]
        lines = [line for line in lines if line.strip()]
        header = lines[0].split("\t") if lines else []
        lacking = [f for f in needed if f not in header]
        if lacking:
            raise UserError("{}: the header line lacks the column(s) {}; use the files of birdsnap.tgz 1.1".format(
                path, ", ".join(lacking)))
        index = {f: header.index(f) for f in needed}
        rows = []
        for lineno, line in enumerate(lines[1:], 2):
            values = line.split("\t")
            if len(values) <= max(index.values()):
                raise UserError("{} line {}: {} tab-separated fields, the header has {}".format(
                    path, lineno, len(values), len(header)))
            rows.append({f: values[i].strip() for f, i in index.items()})
        return rows
