"""Text features: encode sentences once with the frozen text tower and cache them on disk.

The cache key is the model's weights fingerprint plus the exact list of texts, so a change of model,
template or description gives a new entry; the text tower never runs in a training loop.
"""
import hashlib
import os
import os.path as osp

import torch
import torch.nn.functional as F

from fairclip.toolbox.io import atomic_torch_save

from .loading import default_cache_dir, clip


def _cache_file(cache_dir, fingerprint, texts):
    h = hashlib.sha256(fingerprint.encode())
    for t in texts:
        h.update(b"\x00")
        h.update(t.encode("utf-8"))
    return osp.join(cache_dir, "text", "{}-{}.pt".format(fingerprint, h.hexdigest()[:24]))


@torch.no_grad()
def encode_texts(model, texts, fingerprint, cache_dir="", batch_size=256):
    """L2-normalised text embeddings ``[len(texts), D]`` (float32, CPU), from the cache when present."""
    texts = list(texts)
    cache_dir = cache_dir or default_cache_dir()
    path = _cache_file(cache_dir, fingerprint, texts)
    if osp.isfile(path):
        try:
            feats = torch.load(path, map_location="cpu", weights_only=True)
            if feats.shape[0] == len(texts):
                return feats
        except Exception:
            pass  # a damaged cache entry is recomputed and replaced
    device = next(model.parameters()).device
    chunks = []
    for i in range(0, len(texts), batch_size):
        tokens = clip.tokenize(texts[i:i + batch_size], context_length=model.context_length, truncate=True)
        chunks.append(model.encode_text(tokens.to(device)).float().cpu())
    feats = F.normalize(torch.cat(chunks), dim=-1) if chunks else torch.zeros(0, model.text_projection.shape[1])
    os.makedirs(osp.dirname(path), exist_ok=True)
    atomic_torch_save(feats, path)
    return feats


def fill_template(template, classname):
    """Put the class's display name (``_`` -> space) into a template containing ``{}``."""
    return template.format(classname.replace("_", " "))


def template_classifier(model, classnames, templates, fingerprint, cache_dir=""):
    """Zero-shot classifier ``[K, D]``: per class, the normalised mean of normalised template embeddings."""
    texts = [fill_template(t, c) for c in classnames for t in templates]
    feats = encode_texts(model, texts, fingerprint, cache_dir).view(len(classnames), len(templates), -1)
    return F.normalize(feats.mean(dim=1), dim=-1)


def description_bank(model, descriptions, fingerprint, cache_dir=""):
    """Embeddings of per-class descriptions, padded: ``(emb [K, M, D], mask [K, M] bool)``."""
    flat = [s for sents in descriptions for s in sents]
    feats = encode_texts(model, flat, fingerprint, cache_dir)
    k = len(descriptions)
    m = max(len(s) for s in descriptions)
    emb = feats.new_zeros(k, m, feats.shape[1])
    mask = torch.zeros(k, m, dtype=torch.bool)
    start = 0
    for i, sents in enumerate(descriptions):
        emb[i, :len(sents)] = feats[start:start + len(sents)]
        mask[i, :len(sents)] = True
        start += len(sents)
    return emb, mask
