"""Stub of DPA's ``utils/center.py``: the memory bank, class-mean prototypes, distribution alignment and the
confidence-ratio weights."""
import torch
import torch.nn.functional as F


@torch.no_grad()
def build_memory(args, model, dataset_name, data_loader, len_dataset, features_shape):
    model.eval()
    memory = {"features": torch.zeros(len_dataset, features_shape),
              "labels": -torch.ones(len_dataset, dtype=torch.long)}
    for inputs, _, idx in data_loader:
        feats = model(inputs[0])
        memory["features"][idx] = feats
        memory["labels"][idx] = (100.0 * feats @ model.get_classifier().t()).argmax(-1)
    return get_center(args, memory, model.get_classifier()), memory


def get_center(args, memory, classifier):
    rows = []
    for k in range(args.nb_classes):
        chosen = memory["labels"] == k
        row = memory["features"][chosen].mean(0) if chosen.any() else classifier[k].detach()
        rows.append(row / row.norm())
    return torch.stack(rows)


@torch.no_grad()
def refine_pseudoDA(train_config, probs_txt, prob_list, center, features):
    aligned = probs_txt / torch.stack(prob_list).mean(0)
    aligned = aligned / aligned.sum(dim=1, keepdim=True)
    probs_centre = F.softmax(100.0 * features @ center.t(), dim=-1)
    return train_config["a"] * probs_centre + (1 - train_config["a"]) * aligned, aligned, probs_centre


@torch.no_grad()
def get_weights(probs, labels):
    ratio = probs / (probs.max(dim=1, keepdim=True).values + 1e-7)
    return ratio.gather(1, labels[:, None]).squeeze(1)
