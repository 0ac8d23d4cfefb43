"""Stub of MUST's ``model.py``: ``clip_classifier(args)``, CLIP's image tower with a ``[D, K]`` classifier
(``model.visual.classifier``) initialised from the templates; scores are ``100 * <f, W>``."""
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
        with torch.no_grad():
            rows = []
            for name in self.classnames:
                emb = F.normalize(self.model.encode_text(clip.tokenize([t.format(name) for t in templates])), dim=-1)
                rows.append(F.normalize(emb.mean(0), dim=0))
        self.model.visual.classifier = nn.Parameter(torch.stack(rows, dim=1))
        for name in ("transformer", "token_embedding", "positional_embedding", "ln_final", "text_projection",
                     "logit_scale"):
            delattr(self.model, name)

    def forward(self, images):
        visual = self.model.visual
        return 100 * F.normalize(visual(images), dim=-1) @ visual.classifier
