"""Stand-in for LaFTer's trainers/LaFTer.py: LaFTerUFT (text classifier, frozen copy, prompted image tower)
with the attributes and methods tools/parity/lafter.py touches, in a few lines of our own. With
PARITY_STUB_BREAK=1 the text classifier's noise is twice as strong."""
import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from clip import clip

from utils.utils import *  # noqa: F401,F403  (lafter_datasets, as the real file gets it)
from utils.utils import lafter_datasets

WRONG = os.environ.get("PARITY_STUB_BREAK") == "1"


class LaFTerUFT(nn.Module):
    def __init__(self, model, classes, templates, ds_templates=None, device="cuda", log=None, dataset_name=None,
                 txt_cls=None, cfg=None):
        super().__init__()
        if dataset_name not in lafter_datasets:
            raise ValueError("Invalid dataset name for LaFTer")
        self.model, self.device, self.classes = model, device, classes
        self.num_tokens, self.adapter_pl = 50, None
        bound = math.sqrt(6.0 / (3 * 16 * 16 + 768))
        self.prompt_embeddings = nn.Parameter(torch.empty(1, self.num_tokens, 768).uniform_(-bound, bound))
        self.adapter = nn.Sequential(nn.Linear(512, len(classes), bias=False))
        with open("./descriptions/generic/{}.json".format(dataset_name)) as f:
            descriptions = json.load(f)
        texts, labels = [], []
        for i, c in enumerate(classes):
            texts += descriptions[c]
            labels += [i] * len(descriptions[c])
        for i, c in enumerate(classes):
            texts += [t.format(c.replace("_", " ")) for t in ds_templates]
            labels += [i] * len(ds_templates)
        with torch.no_grad():
            self.txt_features_for_text_cls = torch.cat(
                [F.normalize(model.encode_text(clip.tokenize(t)), dim=-1) for t in texts])
        self.labels_for_text_cls = torch.tensor(labels)

    def train_txt_clas(self, criteria):
        noise = torch.randn(self.txt_features_for_text_cls.shape) * (0.2 if WRONG else 0.1)
        return criteria(self.adapter(self.txt_features_for_text_cls + noise), self.labels_for_text_cls)

    def txt_cls_init(self):
        import copy

        self.adapter_pl = copy.deepcopy(self.adapter)

    def _prompted(self, x):
        v = self.model.visual
        x = v.conv1(x).flatten(2).permute(0, 2, 1)
        x = torch.cat([v.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]), x], dim=1) + v.positional_embedding
        x = v.ln_pre(x)
        x = torch.cat([x[:, :1], self.prompt_embeddings.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
        x = v.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        return v.ln_post(x[:, 0]) @ v.proj

    def forward_normal_for_pl(self, x1):
        with torch.no_grad():
            return self.adapter_pl(F.normalize(self.model.encode_image(x1), dim=-1))

    def forward_aug_with_prompts(self, x2):
        return self.adapter(self._prompted(x2))

    def eval_clip(self, x):
        with torch.no_grad():
            return self.adapter(self._prompted(x))
