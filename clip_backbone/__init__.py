"""OpenAI CLIP for this toolbox: loading (name, JIT archive or state dict) and cached text features."""
from .loading import available_models, default_cache_dir, load_clip, load_clip_from_cfg, weights_fingerprint
from .text import description_bank, encode_texts, fill_template, template_classifier

__all__ = [
    "available_models", "default_cache_dir", "load_clip", "load_clip_from_cfg", "weights_fingerprint",
    "description_bank", "encode_texts", "fill_template", "template_classifier",
]
