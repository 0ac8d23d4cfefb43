"""CuPL: zero-shot CLIP whose class embedding is the mean of the class's description embeddings.

The descriptions come from ``DATASET.DESCRIPTIONS`` (ours by default; any CuPL-format file works).
``TRAINER.CUPL.WEIGHTING``: ``mean`` (CuPL), or weight each description by its similarity to the
class-name template embedding, ``linear`` (normalised cosine) or ``softmax`` (softmax of e^2 * cosine).
``TRAINER.CUPL.ADD_TEMPLATES`` also averages in the template embeddings (CuPL's "full" ensemble).
"""
import math

import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from clip_backbone import masked_mean
from toolbox import TRAINER_REGISTRY
from toolbox.errors import UserError

from .zsclip import ZeroshotCLIP


def add_config(cfg):
    cfg.TRAINER.CUPL = CN()
    cfg.TRAINER.CUPL.PREC = "fp32"
    cfg.TRAINER.CUPL.WEIGHTING = "mean"  # mean, linear or softmax
    cfg.TRAINER.CUPL.ADD_TEMPLATES = False


def description_weights(desc_emb, desc_mask, anchor, rule):
    """Weights ``[K, M]`` of each class's descriptions given a per-class anchor embedding ``[K, D]``."""
    mask = desc_mask.float()
    if rule == "mean":
        return mask
    sim = torch.einsum("kmd,kd->km", desc_emb, anchor)
    if rule == "linear":
        w = sim.clamp_min(0) * mask
        return w / w.sum(1, keepdim=True).clamp_min(1e-12)
    if rule == "softmax":
        return torch.softmax((math.e ** 2) * sim.masked_fill(~desc_mask, float("-inf")), dim=1)
    raise UserError("TRAINER.CUPL.WEIGHTING={!r} is not one of mean, linear, softmax".format(rule))


@TRAINER_REGISTRY.register()
class CuPL(ZeroshotCLIP):
    CFG_NODE = "CUPL"

    def build_classifier(self):
        node = self.cfg.TRAINER.CUPL
        emb, mask = self.description_bank()
        anchor = self.template_classifier() if (node.WEIGHTING != "mean" or node.ADD_TEMPLATES) else None
        weights = description_weights(emb, mask, anchor, node.WEIGHTING)
        classifier = masked_mean(emb, mask, weights)
        if node.ADD_TEMPLATES:
            n_desc = mask.sum(1, keepdim=True).float()
            n_tmpl = float(len(self.templates()))
            classifier = F.normalize(classifier * n_desc + anchor * n_tmpl, dim=-1)
        return classifier

    def text_sources(self):
        node = self.cfg.TRAINER.CUPL
        sources = {"descriptions": self.descriptions_path(), "description_weighting": node.WEIGHTING}
        if node.WEIGHTING != "mean" or node.ADD_TEMPLATES:
            sources["templates"] = str(self.cfg.DATASET.TEMPLATES)
        return sources
