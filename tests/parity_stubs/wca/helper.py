"""Stand-in for WCA's helper.py: the functions its main() calls, with the same names and arguments."""
import json
import os
import random

import numpy as np
import torch
import torch.nn.functional as F
from clip import clip
from torch.utils.data import DataLoader


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_dataset(data_path, dataset_name, custom_loader):
    raise RuntimeError("the parity script replaces this")


def accuracy(output, target, n, dataset_name):
    return float((output.argmax(1) == target).float().sum()) / n * 100


def _normalise(x):
    return x / x.norm(dim=-1, keepdim=True)


def generate_weights(method, model, dataset_name, tt_scale=None, device=None):
    with open("features/{0}/{0}.json".format(dataset_name)) as f:
        names = [c.replace("_", " ") for c in json.load(f)]
    with open("prompts/{}/cupl.json".format(dataset_name)) as f:
        descriptions = json.load(f)
    columns = []
    with torch.no_grad():
        for name in names:
            desc = _normalise(model.encode_text(clip.tokenize(descriptions[name], truncate=True)))
            label = _normalise(model.encode_text(clip.tokenize("a photo of a {}.".format(name))))
            weight = ((desc @ label.T) * tt_scale).softmax(dim=0)
            columns.append(_normalise((desc * weight).sum(dim=0)))
    return torch.stack(columns, dim=1)


def load_precomputed_features(model, dataset_name, model_size, alpha, n_samples, batch_size, num_workers, data_path,
                              custom_loader, device):
    dataset = load_dataset(data_path=data_path, dataset_name=dataset_name, custom_loader=custom_loader)
    patches, images, labels = [], [], []
    with torch.no_grad():
        for views, target in DataLoader(dataset, batch_size, shuffle=False, num_workers=num_workers):
            b, n = views.shape[:2]
            feats = F.normalize(model.encode_image(views.flatten(0, 1))).view(b, n, -1)
            agreement = (feats[:, :1] * feats[:, 1:]).sum(dim=-1, keepdim=True)
            patches.append(torch.cat([feats[:, 1:], agreement], -1))
            images.append(feats[:, 0])
            labels.append(target)
    os.makedirs("features/{}".format(dataset_name), exist_ok=True)
    return torch.cat(patches), torch.cat(labels), torch.cat(images)
