"""The synthetic fine-grained world (``tools/make_synthetic.py``): DescribableTextures layout
``synthetic_fg/images/<class>/`` with a required ``split_zhou_SyntheticFG.json``."""
from fairclip.toolbox import DATASET_REGISTRY
from fairclip.toolbox.errors import UserError

from .dtd import DescribableTextures


@DATASET_REGISTRY.register()
class SyntheticFG(DescribableTextures):
    dataset_dir = "synthetic_fg"
    image_subdir = "images"
    split_file = "split_zhou_SyntheticFG.json"

    def build_split(self):
        raise UserError("SyntheticFG: split file {} does not exist; generate the world with "
                        "python -m tools.make_synthetic --root <DATASET.ROOT>".format(self.split_path))
