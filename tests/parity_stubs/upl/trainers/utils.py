"""Stand-in for UPL's trainers/utils.py: the top-K-per-class selection."""
import os

WRONG = os.environ.get("PARITY_STUB_BREAK") == "1"


def select_top_k_similarity_per_class(outputs, img_paths, K=1, image_features=None, is_softmax=True):
    probs = outputs.softmax(dim=1) if is_softmax else outputs
    conf, pred = probs.max(dim=1)
    labels, confs = {}, {}
    for c in sorted(set(pred.tolist())):
        rows = (pred == c).nonzero().flatten()
        rows = rows[conf[rows].argsort(descending=True)]
        for r in (rows[:K - 1 if WRONG else K] if K >= 0 else rows).tolist():
            labels[img_paths[r]] = c
            confs[img_paths[r]] = conf[r]
    return labels, confs
