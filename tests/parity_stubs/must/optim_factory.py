"""Stub of MUST's ``optim_factory.py``: layer-wise lr scales and AdamW groups (no decay on 1-D tensors)."""
import torch


class LayerDecayValueAssigner:
    def __init__(self, values):
        self.values = values

    def get_scale(self, layer_id):
        return self.values[layer_id]

    def get_layer_id(self, name):
        if "embedding" in name or "conv1" in name or "ln_pre" in name:
            return 0
        if "resblocks" in name:
            return int(name.split(".")[4]) + 1
        return len(self.values) - 1


def create_optimizer(args, model, get_num_layer=None, get_layer_scale=None):
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        wd = 0.0 if p.dim() == 1 else args.weight_decay
        layer = get_num_layer(name) if get_num_layer else None
        scale = get_layer_scale(layer) if get_layer_scale else 1.0
        group = groups.setdefault((layer, wd), {"params": [], "weight_decay": wd, "lr_scale": scale})
        group["params"].append(p)
    return torch.optim.AdamW(list(groups.values()), lr=args.lr, eps=args.opt_eps)
