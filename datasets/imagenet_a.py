"""ImageNet-A (natural adversarial examples; Hendrycks et al.), evaluation only: 7,500 images of a
200-class subset of ImageNet in ``imagenet-adversarial/imagenet-a/<wnid>/`` (CoOp's layout), with
ImageNet's ``classnames.txt`` copied to ``imagenet-adversarial/``. Labels 0-199 follow the sorted wnid
folders, as in CoOp."""
from fairclip.toolbox import DATASET_REGISTRY

from .imagenet import ImageNetTestSet


@DATASET_REGISTRY.register()
class ImageNetA(ImageNetTestSet):
    dataset_dir = "imagenet-adversarial"
    image_subdir = "imagenet-a"
