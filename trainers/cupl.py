"""CuPL: zero-shot CLIP whose class embedding is the mean of the class's description embeddings.

The descriptions come from ``DATASET.DESCRIPTIONS`` (ours by default; any CuPL-format file works).
``TRAINER.CUPL.WEIGHTING``: ``mean`` (CuPL), or weight each description by its similarity to the
class-name template embedding, ``linear`` (normalised cosine) or ``softmax`` (softmax of e^2 * cosine).
``TRAINER.CUPL.ADD_TEMPLATES`` also averages in the template embeddings (CuPL's "full" ensemble): every
normalised template and description embedding of the class counts once in one mean, as in CuPL's
``zeroshot_classifier_gpt(..., use_both=True)``; with a weighting other than ``mean`` the descriptions keep
their total weight (their count) and are spread by the weights.
"""
import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from fairclip.clip_backbone.text import template_embeddings
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
        anchor = self.template_classifier() if node.WEIGHTING != "mean" else None
        weights = description_weights(emb, mask, anchor, node.WEIGHTING)
        classifier = description_prototypes(emb, mask, weights)
        if node.ADD_TEMPLATES:
            desc_sum = torch.einsum("km,kmd->kd", weights * mask.sum(1, keepdim=True).float(), emb)
            classifier = F.normalize(desc_sum + self.template_embeddings().sum(1), dim=-1)
        return classifier

    def template_embeddings(self):
        """``[K, T, D]``: the normalised embedding of every template filled with every class name (the same
        cache entry as ``template_classifier``)."""
        return template_embeddings(self.clip_model, self.classnames, self.templates(), self.clip_info["fingerprint"],
                                   self.text_cache_dir).to(self.device)

    def text_sources(self):
        node = self.cfg.TRAINER.CUPL
        sources = {"descriptions": self.descriptions_path(), "description_weighting": node.WEIGHTING}
        if node.WEIGHTING != "mean" or node.ADD_TEMPLATES:
            sources["templates"] = str(self.cfg.DATASET.TEMPLATES)
        return sources
