"""Learning-rate schedules built from plain torch, so trainers behave the same on both backends.

Real Dassl's warmup wrappers pass ``verbose`` to the torch scheduler base class, which torch >= 2.7
rejects; a trainer that needs Dassl's "cosine after warmup" schedule uses ``epoch_scheduler`` instead of
``build_lr_scheduler``. It reproduces Dassl's trace (stepped once per epoch by ``update_lr``), including
the restart of the cosine after warmup (``WARMUP_RECOUNT``), and its state holds only numbers.
"""
import math

import torch

from fairclip.toolbox.errors import UserError


class _DasslCosineWithWarmup:
    """LR multiplier of epoch ``e``: warmup (constant or linear) then cosine over MAX_EPOCH epochs."""

    def __init__(self, base_lr, max_epoch, warmup_epoch, warmup_type, cons_lr, min_lr, recount):
        self.base_lr = base_lr
        self.max_epoch = max_epoch
        self.warmup_epoch = warmup_epoch
        self.warmup_type = warmup_type
        self.cons_lr = cons_lr
        self.min_lr = min_lr
        self.recount = recount

    def __call__(self, epoch):
        if epoch < self.warmup_epoch:
            if self.warmup_type == "constant":
                return self.cons_lr / self.base_lr
            return (self.min_lr / self.base_lr) if epoch == 0 else epoch / self.warmup_epoch
        if self.recount:  # the cosine restarts after warmup
            return 0.5 * (1.0 + math.cos(math.pi * (epoch - self.warmup_epoch) / self.max_epoch))
        # Dassl presets the cosine's epoch to the warmup length: the curve continues from there, rescaled
        # to start at the base LR (what torch's chainable cosine computes from that state).
        start = 1.0 + math.cos(math.pi * self.warmup_epoch / self.max_epoch)
        return (1.0 + math.cos(math.pi * epoch / self.max_epoch)) / start


def epoch_scheduler(optimizer, optim_cfg):
    """Dassl's ``cosine`` schedule with optional constant/linear warmup, as a torch ``LambdaLR``."""
    if optim_cfg.LR_SCHEDULER != "cosine":
        raise UserError("OPTIM.LR_SCHEDULER={!r}: this trainer supports 'cosine'".format(optim_cfg.LR_SCHEDULER))
    if optim_cfg.WARMUP_EPOCH > 0 and optim_cfg.WARMUP_TYPE not in ("constant", "linear"):
        raise UserError("OPTIM.WARMUP_TYPE={!r} is not one of constant, linear".format(optim_cfg.WARMUP_TYPE))
    rule = _DasslCosineWithWarmup(
        optim_cfg.LR, float(optim_cfg.MAX_EPOCH), max(0, optim_cfg.WARMUP_EPOCH), optim_cfg.WARMUP_TYPE,
        optim_cfg.WARMUP_CONS_LR, optim_cfg.WARMUP_MIN_LR, optim_cfg.WARMUP_RECOUNT,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, rule)


class _IterationCosine:
    """LR multiplier of iteration ``t``: ``(min + (base - min) * (1 + cos(pi t / T)) / 2) / base``."""

    def __init__(self, base_lr, min_lr, total_steps):
        self.base_lr = base_lr
        self.min_lr = min_lr
        self.total_steps = max(1, int(total_steps))

    def __call__(self, step):
        cos = 0.5 * (1.0 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))
        return (self.min_lr + (self.base_lr - self.min_lr) * cos) / self.base_lr


def iteration_cosine(optimizer, base_lr, min_lr, total_steps):
    """Per-iteration cosine from ``base_lr`` to ``min_lr`` over ``total_steps``, without warm-up, as MUST's
    and DPA's ``cosine_scheduler``: every group's lr is its own initial lr times the schedule's ratio to
    ``base_lr``, so a group scaled by layer decay keeps that scale down to its floor (``scale * min_lr``).
    (``CosineAnnealingLR(eta_min=min_lr)`` would instead pull every group to the same floor, raising the
    lr of the groups whose scaled lr starts below it.) Step it once per iteration."""
    if base_lr <= 0:
        raise UserError("OPTIM.LR={} must be positive for the per-iteration cosine".format(base_lr))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _IterationCosine(base_lr, min_lr, total_steps))
