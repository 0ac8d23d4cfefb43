"""ImageNet-Sketch (Wang et al.), evaluation only: 50,889 sketches of the 1,000 ImageNet classes in
``imagenet-sketch/images/<wnid>/`` (CoOp's layout), with ImageNet's ``classnames.txt`` copied to
``imagenet-sketch/``. Labels follow the sorted wnid folders, i.e. ImageNet's labels."""
from fairclip.toolbox import DATASET_REGISTRY

from .imagenet import ImageNetTestSet


@DATASET_REGISTRY.register()
class ImageNetSketch(ImageNetTestSet):
    dataset_dir = "imagenet-sketch"
    image_subdir = "images"
