"""Loss terms shared by the self-training trainers (FAIR, MUST, DPA).

Batch-level statistics go through ``global_batch_mean`` so that under DDP they are computed over the
global batch (gathered with gradient): 1 process with batch 2B and 2 processes with batch B optimise the
same objective.
"""
import torch
import torch.distributed as dist
import torch.nn.functional as F


def distributed():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def global_batch_mean(x):
    """Mean over dim 0 of ``x`` across every process's batch, differentiable w.r.t. the local part."""
    if not distributed():
        return x.mean(0)
    from torch.distributed.nn.functional import all_gather  # autograd-aware gather

    return torch.cat(all_gather(x), dim=0).mean(0)


def weighted_cross_entropy(logits, targets, weights=None):
    """``mean_i w_i * CE(logits_i, y_i)`` (plain mean CE when ``weights`` is None)."""
    ce = F.cross_entropy(logits, targets, reduction="none")
    if weights is None:
        return ce.mean()
    return (weights * ce).mean()


def class_balance_loss(mean_probs, eps=1e-8):
    """``-mean_k log pbar_k``: discourages collapsing the predictions onto few classes (MUST's
    fairness regulariser); minimal (= log K) when the mean prediction is uniform."""
    return -torch.log(mean_probs + eps).mean()


def log_marginal_loss(mean_probs):
    """``-mean_k log pbar_k`` without smoothing, as MUST and DPA write their balance terms (the gradient
    pushes hardest on the classes the batch has nearly dropped). ``pbar`` is clamped only at the smallest
    normal float, so a class whose mean probability underflowed to 0 gives a large finite loss where the
    references would stop on an infinite one."""
    return -torch.log(mean_probs.clamp_min(torch.finfo(mean_probs.dtype).tiny)).mean()


class RunningMarginal:
    """MUST's running form of the mean prediction: ``pbar_t = m * pbar_{t-1}.detach() + (1 - m) * pbar_batch``.

    ``reset()`` at the start of each epoch. With m = 0.5 the loss on it is divided by 0.5 (MUST) so the
    gradient scale matches the batch form; ``scale`` gives that factor.
    """

    def __init__(self, momentum=0.5):
        self.momentum = momentum
        self.value = None

    def reset(self):
        self.value = None

    def update(self, batch_mean):
        if self.value is None:
            out = batch_mean
            scale = 1.0
        else:
            out = self.momentum * self.value + (1.0 - self.momentum) * batch_mean
            scale = 1.0 / (1.0 - self.momentum)
        self.value = out.detach()
        return out, scale
