"""Stub of MUST's ``ema.py``: ``ModelEma``, a deep copy updated as ``decay * ema + (1 - decay) * model``."""
import copy

import torch


class ModelEma:
    def __init__(self, model, decay=0.9999, device="", resume=""):
        self.ema = copy.deepcopy(model).eval()
        self.decay = decay
        for p in self.ema.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model):
        current = model.state_dict()
        for key, value in self.ema.state_dict().items():
            value.copy_(value * self.decay + (1.0 - self.decay) * current[key].detach())
