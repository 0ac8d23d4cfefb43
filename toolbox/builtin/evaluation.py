"""Evaluators and metrics mirroring ``dassl.evaluation`` and ``dassl.metrics``.

``Classification.evaluate()`` returns an ordered dict whose first value is the accuracy (what
``trainer.test()`` returns) and prints the ``=> result`` block with ``* accuracy: X%`` lines that
CoOp's ``parse_test_res.py`` reads.
"""
import os.path as osp
from collections import OrderedDict, defaultdict

import numpy as np
import torch

from .utils import Registry, check_availability

EVALUATOR_REGISTRY = Registry("EVALUATOR")


def build_evaluator(cfg, **kwargs):
    avai_evaluators = EVALUATOR_REGISTRY.registered_names()
    check_availability(cfg.TEST.EVALUATOR, avai_evaluators)
    if cfg.VERBOSE:
        print("Loading evaluator: {}".format(cfg.TEST.EVALUATOR))
    return EVALUATOR_REGISTRY.get(cfg.TEST.EVALUATOR)(cfg, **kwargs)


def compute_accuracy(output, target, topk=(1,)):
    """Top-k accuracies in percent, as a list of 1-element tensors."""
    maxk = max(topk)
    batch_size = target.size(0)
    if isinstance(output, (tuple, list)):
        output = output[0]
    _, pred = output.topk(maxk, 1, True, True)
    pred = pred.t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    res = []
    for k in topk:
        correct_k = correct[:k].reshape(-1).float().sum(0, keepdim=True)
        res.append(correct_k.mul_(100.0 / batch_size))
    return res


def macro_f1_score(y_true, y_pred):
    """Unweighted mean of per-class F1 over the classes present in ``y_true``."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    scores = []
    for c in np.unique(y_true):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        denom = 2 * tp + fp + fn
        scores.append(0.0 if denom == 0 else 2.0 * tp / denom)
    return float(np.mean(scores)) if scores else 0.0


class EvaluatorBase:
    def __init__(self, cfg):
        self.cfg = cfg

    def reset(self):
        raise NotImplementedError

    def process(self, mo, gt):
        raise NotImplementedError

    def evaluate(self):
        raise NotImplementedError


@EVALUATOR_REGISTRY.register()
class Classification(EvaluatorBase):
    """Accuracy, error rate, macro-F1 and (with TEST.PER_CLASS_RESULT) mean per-class accuracy."""

    def __init__(self, cfg, lab2cname=None, **kwargs):
        super().__init__(cfg)
        self._lab2cname = lab2cname
        self._correct = 0
        self._total = 0
        self._per_class_res = None
        self._y_true = []
        self._y_pred = []
        if cfg.TEST.PER_CLASS_RESULT:
            assert lab2cname is not None
            self._per_class_res = defaultdict(list)

    def reset(self):
        self._correct = 0
        self._total = 0
        self._y_true = []
        self._y_pred = []
        if self._per_class_res is not None:
            self._per_class_res = defaultdict(list)

    def process(self, mo, gt):
        # mo (torch.Tensor): model output [batch, num_classes]; gt (torch.LongTensor): labels [batch]
        pred = mo.max(1)[1]
        matches = pred.eq(gt).float()
        self._correct += int(matches.sum().item())
        self._total += gt.shape[0]
        self._y_true.extend(gt.data.cpu().numpy().tolist())
        self._y_pred.extend(pred.data.cpu().numpy().tolist())
        if self._per_class_res is not None:
            for i, label in enumerate(gt):
                label = label.item()
                self._per_class_res[label].append(int(matches[i].item()))

    def evaluate(self):
        results = OrderedDict()
        acc = 100.0 * self._correct / self._total
        err = 100.0 - acc
        macro_f1 = 100.0 * macro_f1_score(self._y_true, self._y_pred)
        results["accuracy"] = acc
        results["error_rate"] = err
        results["macro_f1"] = macro_f1

        print(
            "=> result\n"
            "* total: {:,}\n"
            "* correct: {:,}\n"
            "* accuracy: {:.1f}%\n"
            "* error: {:.1f}%\n"
            "* macro_f1: {:.1f}%".format(self._total, self._correct, acc, err, macro_f1)
        )

        if self._per_class_res is not None:
            labels = sorted(self._per_class_res.keys())
            print("=> per-class result")
            accs = []
            for label in labels:
                classname = self._lab2cname[label]
                res = self._per_class_res[label]
                correct = sum(res)
                total = len(res)
                acc_c = 100.0 * correct / total
                accs.append(acc_c)
                print("* class: {} ({})\ttotal: {:,}\tcorrect: {:,}\tacc: {:.1f}%".format(
                    label, classname, total, correct, acc_c))
            mean_acc = float(np.mean(accs))
            print("* average: {:.1f}%".format(mean_acc))
            results["perclass_accuracy"] = mean_acc

        if self.cfg.TEST.COMPUTE_CMAT:
            n = max(max(self._y_true), max(self._y_pred)) + 1
            cmat = np.zeros((n, n), dtype=np.float64)
            for t, p in zip(self._y_true, self._y_pred):
                cmat[t, p] += 1
            cmat = cmat / np.maximum(cmat.sum(axis=1, keepdims=True), 1)
            save_path = osp.join(self.cfg.OUTPUT_DIR, "cmat.pt")
            torch.save(cmat, save_path)
            print('Confusion matrix is saved to "{}"'.format(save_path))

        return results
