"""Stub of DPA's ``utils/model.py``: ``clip_classifier(args)`` returns normalised image features; the text
prototypes (``model.visual.classifier``, ``[K, D]``) and image prototypes (``model.visual.center``) are
read normalised through ``get_classifier`` / ``get_center``."""
import json

import torch
import torch.nn as nn
import torch.nn.functional as F


class clip_classifier(nn.Module):
    def __init__(self, args):
        super().__init__()
        import clip  # OpenAI's package stands in for the reference's own copy of it

        with open(args.template) as f:
            templates = json.load(f)[args.dataset]
        with open(args.classname) as f:
            self.classnames = json.load(f)[args.dataset]
        self.model = clip.model.build_model(torch.load(args.clip_model, map_location="cpu", weights_only=True)).float()
        self.model.embed_dim = self.model.text_projection.shape[1]
        with torch.no_grad():
            rows = []
            for name in self.classnames:
                emb = F.normalize(self.model.encode_text(clip.tokenize([t.format(name) for t in templates])), dim=-1)
                rows.append(F.normalize(emb.mean(0), dim=0))
        self.model.visual.classifier = nn.Parameter(torch.stack(rows, dim=0))
        for name in ("transformer", "token_embedding", "positional_embedding", "ln_final", "text_projection",
                     "logit_scale"):
            delattr(self.model, name)

    def forward(self, images):
        return F.normalize(self.model.visual(images), dim=-1)

    def center_init_fixed(self, center):
        self.model.visual.center = center

    def get_center(self):
        return F.normalize(self.model.visual.center, dim=-1)

    def get_classifier(self):
        return F.normalize(self.model.visual.classifier, dim=-1)
