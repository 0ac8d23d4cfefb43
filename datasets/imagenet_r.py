"""ImageNet-R (renditions; Hendrycks et al.), evaluation only: 30,000 images of a 200-class subset of
ImageNet in ``imagenet-rendition/imagenet-r/<wnid>/`` (CoOp's layout), with ImageNet's ``classnames.txt``
copied to ``imagenet-rendition/``. Labels 0-199 follow the sorted wnid folders, as in CoOp."""
from fairclip.toolbox import DATASET_REGISTRY

from .imagenet import ImageNetTestSet


@DATASET_REGISTRY.register()
class ImageNetR(ImageNetTestSet):
    dataset_dir = "imagenet-rendition"
    image_subdir = "imagenet-r"
