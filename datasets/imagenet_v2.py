"""ImageNetV2 matched-frequency (Recht et al.), evaluation only: 10,000 images of the 1,000 ImageNet
classes in ``imagenetv2/imagenetv2-matched-frequency-format-val/<label>/`` (folders ``0`` ... ``999``
named by ImageNet label; CoOp's layout), with ImageNet's ``classnames.txt`` copied to ``imagenetv2/``.
Folder ``i`` is the ``i``-th class of ``classnames.txt``, as in CoOp."""
from fairclip.toolbox import DATASET_REGISTRY

from .imagenet import ImageNetTestSet


@DATASET_REGISTRY.register()
class ImageNetV2(ImageNetTestSet):
    dataset_dir = "imagenetv2"
    image_subdir = "imagenetv2-matched-frequency-format-val"

    def class_folders(self, names):
        return [(str(label), wnid) for label, wnid in enumerate(names)]
