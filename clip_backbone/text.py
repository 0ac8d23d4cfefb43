"""Text features: encode sentences once with the frozen text tower and cache them on disk.

A cache entry is keyed by everything its features depend on: the model's weights fingerprint (a hash
of every tensor, :func:`clip_backbone.loading.weights_fingerprint`), the tokenizer settings, the exact
list of texts and, for template classifiers, the templates. A change of any of them gives a new entry;
the text tower never runs in a training loop. An entry stores its full key and a SHA-256 of its
features and is loaded with ``weights_only=True``; a file that cannot be read, or whose key or
checksum disagrees, is a one-line error naming it and saying to delete it (it is then rebuilt).
"""
import hashlib
import json
import os
import os.path as osp

import torch
import torch.nn.functional as F

from fairclip.toolbox.errors import UserError
from fairclip.toolbox.io import atomic_torch_save

from .loading import default_cache_dir, clip

CACHE_FORMAT = 2  # 2: {"key", "features", "sha256"}; 1 (before): the bare tensor, keyed by a weak fingerprint


def cache_key(fingerprint, texts, context_length, extra=()):
    """SHA-256 (hex) of everything the features of ``texts`` depend on (JSON: unambiguous boundaries)."""
    payload = [CACHE_FORMAT, str(fingerprint), int(context_length), [str(t) for t in texts], [str(e) for e in extra]]
    return hashlib.sha256(json.dumps(payload).encode("ascii")).hexdigest()


def _cache_file(cache_dir, fingerprint, key):
    return osp.join(cache_dir, "text", "{}-{}.pt".format(fingerprint[:16], key[:32]))


def _features_sha256(feats):
    return hashlib.sha256(feats.detach().contiguous().float().numpy().tobytes()).hexdigest()


def _load_entry(path, key, n):
    """The cached features at ``path``, checked against ``key`` and ``n`` texts."""
    fix = "delete {} (it is rebuilt on the next run)".format(path)
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, truncated, or holding something weights_only refuses
        raise UserError("text-feature cache file {} cannot be read ({}); {}".format(
            path, type(exc).__name__, fix)) from None
    feats = entry.get("features") if isinstance(entry, dict) else None
    if not torch.is_tensor(feats) or entry.get("key") != key or feats.dim() != 2 or feats.shape[0] != n:
        raise UserError("text-feature cache file {} does not hold the features of this model and these texts "
                        "(stale or foreign file); {}".format(path, fix))
    if entry.get("sha256") != _features_sha256(feats):
        raise UserError("text-feature cache file {} is corrupt (checksum mismatch); {}".format(path, fix))
    return feats


@torch.no_grad()
def encode_texts(model, texts, fingerprint, cache_dir="", batch_size=256, extra=()):
    """L2-normalised text embeddings ``[len(texts), D]`` (float32, CPU), from the cache when present.

    ``fingerprint``: ``clip_info["fingerprint"]`` of ``model``; ``extra``: more strings the entry depends
    on (the templates of a template classifier)."""
    texts = list(texts)
    cache_dir = cache_dir or default_cache_dir()
    key = cache_key(fingerprint, texts, model.context_length, extra)
    path = _cache_file(cache_dir, fingerprint, key)
    if osp.isfile(path):
        return _load_entry(path, key, len(texts))
    device = next(model.parameters()).device
    chunks = []
    for i in range(0, len(texts), batch_size):
        tokens = clip.tokenize(texts[i:i + batch_size], context_length=model.context_length, truncate=True)
        chunks.append(model.encode_text(tokens.to(device)).float().cpu())
    feats = F.normalize(torch.cat(chunks), dim=-1) if chunks else torch.zeros(0, model.text_projection.shape[1])
    os.makedirs(osp.dirname(path), exist_ok=True)
    atomic_torch_save({"key": key, "features": feats, "sha256": _features_sha256(feats)}, path)
    return feats


def fill_template(template, classname):
    """Put the class's display name (``_`` -> space) into a template containing ``{}``."""
    return template.format(classname.replace("_", " "))


def template_embeddings(model, classnames, templates, fingerprint, cache_dir=""):
    """``[K, T, D]``: the normalised embedding of every template filled with every class name (cached)."""
    texts = [fill_template(t, c) for c in classnames for t in templates]
    return encode_texts(model, texts, fingerprint, cache_dir, extra=list(templates)).view(
        len(classnames), len(templates), -1)


def template_classifier(model, classnames, templates, fingerprint, cache_dir=""):
    """Zero-shot classifier ``[K, D]``: per class, the normalised mean of normalised template embeddings."""
    return F.normalize(template_embeddings(model, classnames, templates, fingerprint, cache_dir).mean(dim=1), dim=-1)


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
