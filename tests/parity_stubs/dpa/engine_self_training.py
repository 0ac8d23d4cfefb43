"""Stub of DPA's ``engine_self_training.train_one_epoch``: pseudo-labels from the image prototypes and the
distribution-aligned text head, confidence-ratio weights of both heads, weighted CE on the strong view +
class balance + prototype alignment, then the image prototypes from the epoch's memory bank.
``PARITY_STUB_BREAK=1``: the class-balance term is left out of the loss."""
import os

import torch
import torch.nn.functional as F

import utils.utils as utils
from utils.center import get_center, get_weights, refine_pseudoDA


def train_one_epoch(args, model, data_loader_u, optimizer, amp_autocast, device, epoch, loss_scaler,
                    lr_schedule_values, train_config, start_steps=None, memory=None, prob_list=None):
    model.train()
    logger = utils.MetricLogger(delimiter="  ")
    for step, (img, true_labels, idx) in enumerate(data_loader_u):
        weak, strong = img[0], img[1]
        for group in optimizer.param_groups:
            group["lr"] = lr_schedule_values[start_steps + step]
        with torch.no_grad():
            feat_weak = model(weak)
            probs_txt = F.softmax(100.0 * feat_weak @ model.get_classifier().t(), dim=-1)
            prob_list.append(probs_txt.mean(0))
            if len(prob_list) > 32:
                prob_list.pop(0)
            probs, _, probs_centre = refine_pseudoDA(train_config, probs_txt, prob_list, model.get_center(), feat_weak)
            pseudo = probs.argmax(-1)
            weights = get_weights(probs_txt, pseudo) * get_weights(probs_centre, pseudo)
        with amp_autocast():
            logits = 100.0 * model(strong) @ model.get_classifier().t()
            loss = (weights * F.cross_entropy(logits, pseudo, reduction="none")).mean()
            if not os.environ.get("PARITY_STUB_BREAK"):
                loss = loss - train_config["reg"] * torch.log(F.softmax(logits, dim=-1).mean(0)).mean()
            align = train_config["w"] * model.get_center() @ model.get_classifier().t()
            loss = loss + train_config["align"] * F.cross_entropy(align, torch.arange(len(align)))
        memory["features"][idx] = feat_weak.detach()
        memory["labels"][idx] = pseudo
        logger.update(loss=loss.item(), acc=(F.softmax(logits, -1).argmax(-1) == true_labels).float().mean().item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.center_init_fixed(get_center(args, memory, model.get_classifier()))
    return {}, memory, prob_list
