"""WCA (Li et al., ICML 2024): training-free alignment of local crops with class descriptions.

Per test image: the centre view gives ``g``; ``N`` random square crops give ``c_n``. Each crop is weighted
by how much it agrees with the whole image, ``a = softmax(CROP_TAU * <c_n, g>)``; each class's
descriptions by how much they agree with the class-name embedding, ``v_k = softmax(DESC_TAU * <d_km, t_k>)``,
where ``t_k`` is the embedding of ``ANCHOR_TEMPLATES`` filled with the class name (WCA: "a photo of a {}.").
The score is ``<normalize(sum_n a_n c_n), W_k>`` with ``W_k = normalize(sum_m v_km d_km)`` (the bilinear
form of WCA's weighted crop x description similarity), optionally plus ``GLOBAL_WEIGHT * <g, W_k>``.

Crops are seeded by ``SEED`` and the image content, so a result does not depend on the data-loader
worker count or the batch order; WCA averages several random draws, which the script's seeds give. A
crop's side is ``floor(U(MIN_FRAC, MAX_FRAC) * min(H, W))`` pixels at a uniform position, as WCA crops.
docs/parity.md compares this trainer with WCA's released code.
Run with ``--eval-only``; the train split is never read.
"""
import hashlib
import math
import random

import torch
from yacs.config import CfgNode as CN

from fairclip.datasets.templates import get_templates
from fairclip.toolbox import TRAINER_REGISTRY, build_transform
from fairclip.toolbox.errors import UserError

from ._alignment import crop_relevance, crop_weights, description_prototypes, weighted_composite
from ._clip_base import ClipTrainer
from ._views import LocalCrops


def add_config(cfg):
    c = cfg.TRAINER.WCA = CN()
    c.PREC = "fp32"  # fp32 or bf16 (autocast) for the image tower
    # WCA pre-computes 100 crops per image and samples 60 of them; we draw N_CROPS directly.
    c.N_CROPS = 60
    # Crop side ~ U(MIN_FRAC, MAX_FRAC) * min(H, W). WCA's config says 0.5 (as microCLIP/FAIR), but the
    # loader in its released main.py calls the crop function with its default lower bound 0.1.
    c.MIN_FRAC = 0.5
    c.MAX_FRAC = 0.9
    # The class-name prompt t_k that weights the descriptions: "single" ("a photo of a {}.", as WCA), or any
    # DATASET.TEMPLATES value ("ensemble", "coop", a JSON file).
    c.ANCHOR_TEMPLATES = "single"
    c.CROP_TAU = math.exp(4)  # crop weights softmax(tau * <c_n, g>) (WCA: e^4; 0 = uniform)
    c.DESC_TAU = math.exp(2)  # description weights softmax(tau * <d, t_k>) (WCA: e^2; 0 = CuPL mean)
    # Reconstructed option (0 = WCA): also add the centre view's own score, weighted by this.
    c.GLOBAL_WEIGHT = 0.0
    c.CROP_CHUNK = 512  # crop images per image-tower forward (bounds memory, not the result)
    c.LOGIT_SCALE = 100.0


# ---------------------------------------------------------------------------- the rules (pure functions)
def softmax_description_weights(emb, mask, class_emb, tau):
    """``v [K, M] = softmax_m(tau * <d_km, t_k>)`` over each class's real descriptions (padding gets 0)."""
    sim = torch.einsum("kmd,kd->km", emb, class_emb)
    return torch.softmax((tau * sim).masked_fill(~mask, float("-inf")), dim=1)


def wca_scores(global_feats, crop_feats, prototypes, crop_tau, global_weight=0.0):
    """``[B, K]`` cosine scores: relevance-weighted crop composite (plus the optional global term)."""
    weights = crop_weights(crop_relevance(crop_feats, global_feats), crop_tau)
    scores = weighted_composite(crop_feats, weights) @ prototypes.t()
    if global_weight:
        scores = scores + global_weight * (global_feats @ prototypes.t())
    return scores


def wca_square_crop(width, height, min_frac, max_frac, rng):
    """A box ``(left, top, side)``: side ``floor(U(min_frac, max_frac) * min(W, H))`` (at least 1), position
    uniform over the image (WCA's ``RandomCrop(int(n_px))``)."""
    side = max(1, int(rng.uniform(min_frac, max_frac) * min(width, height)))
    return rng.randint(0, width - side), rng.randint(0, height - side), side


def image_seed(img, seed):
    """A seed from the run's seed and a small fingerprint of the image (size + 8x8 thumbnail)."""
    h = hashlib.sha256("{}:{}x{}:".format(seed, *img.size).encode())
    h.update(img.convert("RGB").resize((8, 8)).tobytes())
    return int.from_bytes(h.digest()[:8], "little")


class SeededLocalCrops(LocalCrops):
    """``LocalCrops`` whose boxes are a function of (seed, image) only: reproducible in any worker/order."""

    def __init__(self, cfg, n, min_frac, max_frac, seed):
        super().__init__(cfg, n=n, min_frac=min_frac, max_frac=max_frac)
        self.seed = seed

    def boxes(self, img):
        rng = random.Random(image_seed(img, self.seed))
        w, h = img.size
        return [wca_square_crop(w, h, self.min_frac, self.max_frac, rng) for _ in range(self.n)]

    def __call__(self, img):
        return torch.stack([self.finish(img.crop((x, y, x + s, y + s))) for x, y, s in self.boxes(img)])


# ---------------------------------------------------------------------------- trainer
@TRAINER_REGISTRY.register()
class WCA(ClipTrainer):
    CFG_NODE = "WCA"
    SUPPORTS_DDP = True  # training-free: evaluation is sharded over processes

    def check_cfg(self, cfg):
        c = cfg.TRAINER.WCA
        self.check_choices(cfg, {"PREC": ("fp32", "bf16")})
        if c.N_CROPS < 1:
            raise UserError("TRAINER.WCA.N_CROPS={} must be at least 1".format(c.N_CROPS))
        if not 0.0 < c.MIN_FRAC <= c.MAX_FRAC <= 1.0:
            raise UserError("TRAINER.WCA.MIN_FRAC={} and MAX_FRAC={} must satisfy 0 < MIN_FRAC <= MAX_FRAC <= 1"
                            .format(c.MIN_FRAC, c.MAX_FRAC))
        if c.CROP_CHUNK < 1:
            raise UserError("TRAINER.WCA.CROP_CHUNK={} must be at least 1".format(c.CROP_CHUNK))

    def custom_test_transform(self):
        c = self.cfg.TRAINER.WCA
        crops = SeededLocalCrops(self.cfg, c.N_CROPS, c.MIN_FRAC, c.MAX_FRAC, seed=self.cfg.SEED)
        return [build_transform(self.cfg, is_train=False), crops]  # batch keys img (centre), img2 (crops)

    def build_method(self):
        c = self.cfg.TRAINER.WCA
        emb, mask = self.description_bank()
        weights = softmax_description_weights(emb, mask, self.template_classifier(self.anchor_templates()), c.DESC_TAU)
        self.prototypes = description_prototypes(emb, mask, weights)  # [K, D]

    def anchor_templates(self):
        return get_templates(self.cfg.TRAINER.WCA.ANCHOR_TEMPLATES, self.dataset_key)

    def text_sources(self):
        c = self.cfg.TRAINER.WCA
        return {"descriptions": self.descriptions_path(), "templates": str(c.ANCHOR_TEMPLATES),
                "description_weighting": "softmax(tau={:.4g} * <d, t_k>)".format(c.DESC_TAU)}

    def parse_batch_test(self, batch):
        images = (batch["img"].to(self.device), batch["img2"].to(self.device))
        return images, batch["label"].to(self.device)

    def model_inference(self, images):
        c = self.cfg.TRAINER.WCA
        centre, crops = images
        b, n = crops.shape[:2]
        global_feats = self.encode_images(centre)
        flat = crops.flatten(0, 1)
        crop_feats = torch.cat([self.encode_images(flat[i:i + c.CROP_CHUNK])
                                for i in range(0, flat.shape[0], c.CROP_CHUNK)]).view(b, n, -1)
        scores = wca_scores(global_feats, crop_feats, self.prototypes, c.CROP_TAU, c.GLOBAL_WEIGHT)
        return c.LOGIT_SCALE * scores
