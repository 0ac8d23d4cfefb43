"""Describable Textures (47 textures): ``dtd/images/<texture>/``."""
from fairclip.toolbox import DATASET_REGISTRY

from .common import SplitJsonDataset, folder_entries, split_per_class


@DATASET_REGISTRY.register()
class DescribableTextures(SplitJsonDataset):
    dataset_dir = "dtd"
    image_subdir = "images"
    split_file = "split_zhou_DescribableTextures.json"
    ignored = ()
    new_cnames = None

    def build_split(self):
        # Our fallback: 50/20/30 per class, seeded (CoOp's published split file takes precedence).
        entries = folder_entries(self.image_dir, self.name, ignored=self.ignored, new_cnames=self.new_cnames)
        return split_per_class(entries, self.name, p_trn=0.5, p_val=0.2)
