"""``build_transform`` mirroring ``dassl.data.transforms`` (Dassl HEAD semantics).

Train: the requested augmentations in Dassl's fixed order. Test: resize the shorter side to
max(INPUT.SIZE), center crop INPUT.SIZE, to tensor, normalize (CLIP's own preprocessing when the
CLIP mean/std and bicubic interpolation are configured).
"""
import random

import torch
from torchvision.transforms import (
    AutoAugment, AutoAugmentPolicy, CenterCrop, ColorJitter, Compose, GaussianBlur, InterpolationMode,
    Normalize, RandAugment, RandomApply, RandomCrop, RandomGrayscale, RandomHorizontalFlip,
    RandomResizedCrop, Resize, ToTensor,
)

AVAI_CHOICES = [
    "random_flip", "random_resized_crop", "normalize", "instance_norm", "random_crop",
    "random_translation", "center_crop", "cutout", "imagenet_policy", "cifar10_policy", "svhn_policy",
    "randaugment", "randaugment_fixmatch", "randaugment2", "gaussian_noise", "colorjitter",
    "randomgrayscale", "gaussian_blur",
]

INTERPOLATION_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


class Random2DTranslation:
    """With probability p: resize to 1.125x then randomly crop back to (height, width)."""

    def __init__(self, height, width, p=0.5, interpolation=InterpolationMode.BILINEAR):
        self.height = height
        self.width = width
        self.p = p
        self.interpolation = interpolation

    def __call__(self, img):
        if random.uniform(0, 1) > self.p:
            return Resize((self.height, self.width), interpolation=self.interpolation)(img)
        new_width = int(round(self.width * 1.125))
        new_height = int(round(self.height * 1.125))
        resized = Resize((new_height, new_width), interpolation=self.interpolation)(img)
        x1 = int(round(random.uniform(0, new_width - self.width)))
        y1 = int(round(random.uniform(0, new_height - self.height)))
        return resized.crop((x1, y1, x1 + self.width, y1 + self.height))


class InstanceNormalization:
    """Normalize each image tensor by its own per-channel mean and std."""

    def __init__(self, eps=1e-8):
        self.eps = eps

    def __call__(self, img):
        c, h, w = img.shape
        flat = img.reshape(c, h * w)
        mean = flat.mean(1).view(c, 1, 1)
        std = flat.std(1).view(c, 1, 1)
        return (img - mean) / (std + self.eps)


class Cutout:
    """Zero out ``n_holes`` square patches of side ``length`` (on a tensor)."""

    def __init__(self, n_holes=1, length=16):
        self.n_holes = n_holes
        self.length = length

    def __call__(self, img):
        h, w = img.shape[1:]
        mask = torch.ones(h, w, dtype=img.dtype)
        for _ in range(self.n_holes):
            y = random.randrange(h)
            x = random.randrange(w)
            y1, y2 = max(0, y - self.length // 2), min(h, y + self.length // 2)
            x1, x2 = max(0, x - self.length // 2), min(w, x + self.length // 2)
            mask[y1:y2, x1:x2] = 0.0
        return img * mask.unsqueeze(0)


class GaussianNoise:
    """Add N(mean, std) noise with probability p (on a tensor)."""

    def __init__(self, mean=0, std=0.15, p=0.5):
        self.mean = mean
        self.std = std
        self.p = p

    def __call__(self, img):
        if random.uniform(0, 1) > self.p:
            return img
        return img + torch.randn(img.size()) * self.std + self.mean


def build_transform(cfg, is_train=True, choices=None):
    if cfg.INPUT.NO_TRANSFORM:
        print("Note: no transform is applied!")
        return None
    if choices is None:
        choices = cfg.INPUT.TRANSFORMS
    for choice in choices:
        assert choice in AVAI_CHOICES, "Unknown transform '{}'; choose from {}".format(choice, AVAI_CHOICES)

    target_size = "{}x{}".format(cfg.INPUT.SIZE[0], cfg.INPUT.SIZE[1])
    normalize = Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)
    if is_train:
        return _build_transform_train(cfg, choices, target_size, normalize)
    return _build_transform_test(cfg, choices, target_size, normalize)


def _build_transform_train(cfg, choices, target_size, normalize):
    print("Building transform_train")
    tfm_train = []
    interp_mode = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
    input_size = cfg.INPUT.SIZE

    conditions = ["random_crop" not in choices, "random_resized_crop" not in choices]
    if all(conditions):
        print("+ resize to {}".format(target_size))
        tfm_train += [Resize(input_size, interpolation=interp_mode)]
    if "random_translation" in choices:
        print("+ random translation")
        tfm_train += [Random2DTranslation(input_size[0], input_size[1], interpolation=interp_mode)]
    if "random_crop" in choices:
        crop_padding = cfg.INPUT.CROP_PADDING
        print("+ random crop (padding = {})".format(crop_padding))
        tfm_train += [RandomCrop(input_size, padding=crop_padding)]
    if "random_resized_crop" in choices:
        s_ = cfg.INPUT.RRCROP_SCALE
        print("+ random resized crop (size={}, scale={})".format(input_size, s_))
        tfm_train += [RandomResizedCrop(input_size, scale=s_, interpolation=interp_mode)]
    if "random_flip" in choices:
        print("+ random flip")
        tfm_train += [RandomHorizontalFlip()]
    if "imagenet_policy" in choices:
        print("+ imagenet policy")
        tfm_train += [AutoAugment(AutoAugmentPolicy.IMAGENET)]
    if "cifar10_policy" in choices:
        print("+ cifar10 policy")
        tfm_train += [AutoAugment(AutoAugmentPolicy.CIFAR10)]
    if "svhn_policy" in choices:
        print("+ svhn policy")
        tfm_train += [AutoAugment(AutoAugmentPolicy.SVHN)]
    if "randaugment" in choices:
        n_ = cfg.INPUT.RANDAUGMENT_N
        m_ = cfg.INPUT.RANDAUGMENT_M
        print("+ randaugment (n={}, m={})".format(n_, m_))
        tfm_train += [RandAugment(num_ops=n_, magnitude=m_)]
    if "randaugment_fixmatch" in choices:
        n_ = cfg.INPUT.RANDAUGMENT_N
        print("+ randaugment_fixmatch (n={})".format(n_))
        tfm_train += [RandAugment(num_ops=n_)]
    if "randaugment2" in choices:
        n_ = cfg.INPUT.RANDAUGMENT_N
        print("+ randaugment2 (n={})".format(n_))
        tfm_train += [RandAugment(num_ops=n_)]
    if "colorjitter" in choices:
        b_ = cfg.INPUT.COLORJITTER_B
        c_ = cfg.INPUT.COLORJITTER_C
        s_ = cfg.INPUT.COLORJITTER_S
        h_ = cfg.INPUT.COLORJITTER_H
        print("+ color jitter (brightness={}, contrast={}, saturation={}, hue={})".format(b_, c_, s_, h_))
        tfm_train += [ColorJitter(brightness=b_, contrast=c_, saturation=s_, hue=h_)]
    if "randomgrayscale" in choices:
        print("+ random gray scale (p={})".format(cfg.INPUT.RGS_P))
        tfm_train += [RandomGrayscale(p=cfg.INPUT.RGS_P)]
    if "gaussian_blur" in choices:
        gb_k, gb_p = cfg.INPUT.GB_K, cfg.INPUT.GB_P
        print("+ gaussian blur (kernel={}, p={})".format(gb_k, gb_p))
        tfm_train += [RandomApply([GaussianBlur(gb_k)], p=gb_p)]

    print("+ to torch tensor of range [0, 1]")
    tfm_train += [ToTensor()]

    if "cutout" in choices:
        cutout_n = cfg.INPUT.CUTOUT_N
        cutout_len = cfg.INPUT.CUTOUT_LEN
        print("+ cutout (n_holes={}, length={})".format(cutout_n, cutout_len))
        tfm_train += [Cutout(cutout_n, cutout_len)]
    if "normalize" in choices:
        print("+ normalization (mean={}, std={})".format(cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD))
        tfm_train += [normalize]
    if "gaussian_noise" in choices:
        print("+ gaussian noise (mean={}, std={})".format(cfg.INPUT.GN_MEAN, cfg.INPUT.GN_STD))
        tfm_train += [GaussianNoise(cfg.INPUT.GN_MEAN, cfg.INPUT.GN_STD)]
    if "instance_norm" in choices:
        print("+ instance normalization")
        tfm_train += [InstanceNormalization()]
    return Compose(tfm_train)


def _build_transform_test(cfg, choices, target_size, normalize):
    print("Building transform_test")
    tfm_test = []
    interp_mode = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
    input_size = cfg.INPUT.SIZE

    print("+ resize the smaller edge to {}".format(max(input_size)))
    tfm_test += [Resize(max(input_size), interpolation=interp_mode)]
    print("+ {} center crop".format(target_size))
    tfm_test += [CenterCrop(input_size)]
    print("+ to torch tensor of range [0, 1]")
    tfm_test += [ToTensor()]
    if "normalize" in choices:
        print("+ normalization (mean={}, std={})".format(cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD))
        tfm_test += [normalize]
    if "instance_norm" in choices:
        print("+ instance normalization")
        tfm_test += [InstanceNormalization()]
    return Compose(tfm_test)
