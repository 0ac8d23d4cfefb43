"""Crop / description alignment shared by WCA, FAIR and CuPL (pure tensor functions, no state).

Notation: features are L2-normalised; ``g`` [B, D] global (weak view) features, ``c`` [B, N, D] local
crop features, ``emb`` [K, M, D] description embeddings with ``mask`` [K, M], ``t`` [K, D] class-name
(template) embeddings.
"""
import math

import torch
import torch.nn.functional as F

from fairclip.toolbox.errors import UserError


def crop_relevance(crops, global_feats):
    """``r_n = <c_n, g>``: how much each crop agrees with its whole image, ``[B, N]``."""
    return torch.einsum("bnd,bd->bn", crops, global_feats)


def crop_weights(relevance, tau):
    """Softmax of ``tau * r`` over the crops (WCA uses tau = e^4; tau = 0 gives uniform weights)."""
    return torch.softmax(tau * relevance, dim=1)


def weighted_composite(crops, weights):
    """``normalize(sum_n a_n c_n)``, ``[B, D]``."""
    return F.normalize(torch.einsum("bn,bnd->bd", weights, crops), dim=-1)


def select_top_crops(crops, relevance, k):
    """Keep the ``k`` crops most relevant to the whole image: ``(crops [B, k, D], relevance [B, k])``."""
    picked, top_relevance, _ = top_crops(crops, relevance, k)
    return picked, top_relevance


def top_crops(crops, relevance, k):
    """``select_top_crops`` that also returns the chosen positions: ``(crops [B, k, D], relevance [B, k],
    index [B, k])`` (FAIR re-encodes the chosen crop images with gradient)."""
    k = min(k, crops.shape[1])
    top = relevance.topk(k, dim=1).indices
    picked = torch.gather(crops, 1, top.unsqueeze(-1).expand(-1, -1, crops.shape[-1]))
    return picked, torch.gather(relevance, 1, top), top


def description_weights(emb, mask, class_emb, rule):
    """Weights ``[K, M]`` of each class's descriptions, from their similarity to ``class_emb`` [K, D].

    ``mean``: uniform (CuPL); ``linear``: cosine similarity normalised to sum 1 (microCLIP's fixed
    classifier); ``softmax``: softmax of e^2 * cosine (WCA).
    """
    maskf = mask.float()
    if rule == "mean":
        return maskf / maskf.sum(1, keepdim=True).clamp_min(1)
    if class_emb is None:
        raise ValueError("description weighting {!r} needs class embeddings".format(rule))
    sim = torch.einsum("kmd,kd->km", emb, class_emb)
    if rule == "linear":
        w = sim.clamp_min(0) * maskf
        return w / w.sum(1, keepdim=True).clamp_min(1e-12)
    if rule == "softmax":
        return torch.softmax((math.e ** 2) * sim.masked_fill(~mask, float("-inf")), dim=1)
    raise UserError("description weighting {!r} is not one of mean, linear, softmax".format(rule))


def description_prototypes(emb, mask, weights):
    """``W_k = normalize(sum_m v_km d_km)``: one prototype per class, ``[K, D]``."""
    return F.normalize(torch.einsum("km,kmd->kd", weights * mask.float(), emb), dim=-1)


def mean_description_embedding(emb, mask):
    """The class's mean description embedding, normalised (CuPL prototype; FAIR's anchor init)."""
    return description_prototypes(emb, mask, description_weights(emb, mask, None, "mean"))
