"""CuPL: zero-shot CLIP whose class embedding is the mean of the class's description embeddings.

The descriptions come from ``DATASET.DESCRIPTIONS`` (ours by default; any CuPL-format file works).
``TRAINER.CUPL.WEIGHTING``: ``mean`` (CuPL), or weight each description by its similarity to the
class-name template embedding, ``linear`` (normalised cosine) or ``softmax`` (softmax of e^2 * cosine).
``TRAINER.CUPL.ADD_TEMPLATES`` also averages in the template embeddings (CuPL's "full" ensemble).
"""
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from fairclip.toolbox import TRAINER_REGISTRY

from ._alignment import description_prototypes, description_weights
from .zsclip import ZeroshotCLIP


def add_config(cfg):
    cfg.TRAINER.CUPL = CN()
    cfg.TRAINER.CUPL.PREC = "fp32"
    cfg.TRAINER.CUPL.WEIGHTING = "mean"  # mean, linear or softmax
    cfg.TRAINER.CUPL.ADD_TEMPLATES = False


@TRAINER_REGISTRY.register()
class CuPL(ZeroshotCLIP):
    CFG_NODE = "CUPL"

    def build_classifier(self):
        node = self.cfg.TRAINER.CUPL
        emb, mask = self.description_bank()
        anchor = self.template_classifier() if (node.WEIGHTING != "mean" or node.ADD_TEMPLATES) else None
        classifier = description_prototypes(emb, mask, description_weights(emb, mask, anchor, node.WEIGHTING))
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
