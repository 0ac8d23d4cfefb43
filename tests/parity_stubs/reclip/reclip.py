"""Stand-in for ReCLIP's reclip.py: its command line (same defaults) and main(), one evaluation pass with
label propagation, the agreement-masked training of both branches and the end-of-epoch text update per
epoch, in a few lines of our own. With PARITY_STUB_BREAK=1, ReCLIP-V's loss is not divided by the batch."""
import argparse
import json
import os

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from datasets import accuracy, get_dataset  # noqa: F401  (as the real script imports them)
from models import CLIP_LN_T, CLIP_LN_V, LabelPropagationCluster

WRONG = os.environ.get("PARITY_STUB_BREAK") == "1"

parser = argparse.ArgumentParser()
parser.add_argument("--dataset", default="resisc45")
parser.add_argument("--architecture", default="ViT-L/14")
parser.add_argument("--bs", default=64, type=int, dest="bs")
parser.add_argument("--epoch_max", default=100, type=int, dest="epoch_max")
parser.add_argument("--wd", default=1e-4, type=float, dest="weight_decay")
parser.add_argument("--lrt", default=1e-3, type=float, dest="lrt")
parser.add_argument("--lrv", default=1e-3, type=float, dest="lrv")
parser.add_argument("--neighbor_size", default=20, type=int)
parser.add_argument("--alpha", default=0.99, type=float)
parser.add_argument("--cut_dim", default=768, type=int)
parser.add_argument("--seed", default=0, type=int)
parser.add_argument("--log", default="./logs/")


def main():
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    with open("./prompts/clip_prompts") as f:
        entry = json.load(f)[args.dataset]
    names, templates = entry["classes"], entry["templates"]
    v_model = CLIP_LN_V(class_names=names, templates=templates, architecture=args.architecture)
    t_model = CLIP_LN_T(architecture=args.architecture, templates=templates)
    v_opt = torch.optim.SGD(v_model.learnable_params, args.lrv, weight_decay=args.weight_decay, momentum=0.9)
    t_opt = torch.optim.SGD(t_model.learnable_params, args.lrt, weight_decay=args.weight_decay, momentum=0.9)
    data = get_dataset(dataset_name=args.dataset, preprocess=t_model.preprocess)
    epochs = min(args.epoch_max, int(len(data) / 5000 + 2))
    lp = dict(k=args.neighbor_size, alpha=args.alpha, cut_dim=args.cut_dim)
    v_lp = LabelPropagationCluster(v_model.classification_weight, len(data), **lp)
    t_lp = LabelPropagationCluster(v_model.classification_weight, len(data), **lp)
    in_order = DataLoader(data, batch_size=args.bs, num_workers=4, shuffle=False)
    shuffled = DataLoader(data, batch_size=args.bs, num_workers=4, shuffle=True)
    for _ in range(epochs):
        with torch.no_grad():
            for images, idx, label in in_order:
                t_lp(t_model(images, names)[1], idx, label)
                v_lp(v_model(images)[1], idx, label)
            t_lp.perform_label_propagation(clear_cache=True)
            _, centroids = v_lp.perform_label_propagation(clear_cache=True, cluster_centriod=True)
            v_model.classification_weight = centroids.t()
        for images, idx, label in shuffled:
            t_logits, v_logits = t_model(images, names)[0], v_model(images)[0]
            t_pl = torch.tensor([t_lp.pseudo_labels[int(i)] for i in idx])
            v_pl = torch.tensor([v_lp.pseudo_labels[int(i)] for i in idx])
            agree = (t_pl == v_pl).float()
            if agree.sum() > 0:
                t_opt.zero_grad()
                ((F.cross_entropy(t_logits, t_pl, reduction="none") * agree).sum() / agree.sum()).backward()
                t_opt.step()
                v_opt.zero_grad()
                v_ce = F.cross_entropy(v_logits, v_pl, reduction="none") * agree
                (v_ce.sum() / agree.sum() if WRONG else v_ce.mean() / agree.sum()).backward()
                v_opt.step()
        with torch.no_grad():
            weights = t_model.encode_text(names, full_templates=True)
            t_lp.update_projection(weights)
            t_lp.update_centriods(weights.t())
