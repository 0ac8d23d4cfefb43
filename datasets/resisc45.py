"""NWPU-RESISC45 (45 remote-sensing scenes): ``resisc45/NWPU-RESISC45/<class>/``.

CoOp has no split for RESISC45; ours (``split_zhou_RESISC45.json``, built on first use) takes a
seeded 50/20/30 train/val/test split of each class folder (350/140/210 of the 700 images)."""
from fairclip.toolbox import DATASET_REGISTRY

from .dtd import DescribableTextures


@DATASET_REGISTRY.register()
class RESISC45(DescribableTextures):
    dataset_dir = "resisc45"
    image_subdir = "NWPU-RESISC45"
    split_file = "split_zhou_RESISC45.json"
