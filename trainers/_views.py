"""Training views for the self-training methods (CPU/PIL reference path).

* weak: resize the shorter side to the input size, random crop (DPA / microCLIP weak view);
* strong: RandomResizedCrop(scale) + horizontal flip + RandAugment(2 ops, magnitude M);
* local crops: N square crops of side U(min_frac, max_frac) * min(H, W) at random positions of the
  original image, each resized to the input size (WCA / FAIR local views).

A list of transforms given to the data manager yields batch keys ``img``, ``img2``, ``img3`` (Dassl's
convention, same on both backends); the crops arrive as one ``[B, N, 3, H, W]`` tensor.
"""
import random

import torch
import torchvision.transforms as T

from fairclip.toolbox import INTERPOLATION_MODES


def _normalize(cfg):
    return T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)


def _interp(cfg):
    return INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]


def weak_transform(cfg):
    size = tuple(cfg.INPUT.SIZE)
    return T.Compose([
        T.Resize(max(size), interpolation=_interp(cfg)),
        T.RandomCrop(size),
        T.ToTensor(),
        _normalize(cfg),
    ])


def strong_transform(cfg, scale=(0.3, 1.0), randaugment_m=9, randaugment_n=2):
    size = tuple(cfg.INPUT.SIZE)
    return T.Compose([
        T.RandomResizedCrop(size, scale=tuple(scale), interpolation=_interp(cfg)),
        T.RandomHorizontalFlip(),
        T.RandAugment(num_ops=randaugment_n, magnitude=randaugment_m),
        T.ToTensor(),
        _normalize(cfg),
    ])


def sample_square_crop(width, height, min_frac, max_frac, rng=random):
    """A random square box ``(left, top, side)`` with side ``U(min_frac, max_frac) * min(W, H)``."""
    side = max(1, int(round(rng.uniform(min_frac, max_frac) * min(width, height))))
    left = rng.randint(0, width - side)
    top = rng.randint(0, height - side)
    return left, top, side


class LocalCrops:
    """``n`` random square crops of a PIL image, resized to the input size: tensor ``[n, 3, H, W]``."""

    def __init__(self, cfg, n=8, min_frac=0.5, max_frac=0.9):
        self.n = n
        self.min_frac = min_frac
        self.max_frac = max_frac
        self.finish = T.Compose([
            T.Resize(tuple(cfg.INPUT.SIZE), interpolation=_interp(cfg)),
            T.ToTensor(),
            _normalize(cfg),
        ])

    def __call__(self, img):
        w, h = img.size
        crops = []
        for _ in range(self.n):
            left, top, side = sample_square_crop(w, h, self.min_frac, self.max_frac)
            crops.append(self.finish(img.crop((left, top, left + side, top + side))))
        return torch.stack(crops)

    def __repr__(self):
        return "LocalCrops(n={}, side=U({}, {})*min(H,W))".format(self.n, self.min_frac, self.max_frac)
