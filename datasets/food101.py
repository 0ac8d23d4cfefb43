"""Food-101: ``food-101/images/<dish>/`` (meta/ is not used, as in CoOp)."""
from fairclip.toolbox import DATASET_REGISTRY

from .dtd import DescribableTextures


@DATASET_REGISTRY.register()
class Food101(DescribableTextures):
    dataset_dir = "food-101"
    image_subdir = "images"
    split_file = "split_zhou_Food101.json"
