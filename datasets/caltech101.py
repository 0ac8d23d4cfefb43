"""Caltech-101 (100 object classes): ``caltech-101/101_ObjectCategories/<class>/``; the background
class and the duplicate ``Faces_easy`` are left out, four names are made singular (as in CoOp)."""
from fairclip.toolbox import DATASET_REGISTRY

from .dtd import DescribableTextures

IGNORED = ("BACKGROUND_Google", "Faces_easy")
NEW_CNAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}


@DATASET_REGISTRY.register()
class Caltech101(DescribableTextures):
    dataset_dir = "caltech-101"
    image_subdir = "101_ObjectCategories"
    split_file = "split_zhou_Caltech101.json"
    ignored = IGNORED
    new_cnames = NEW_CNAMES
