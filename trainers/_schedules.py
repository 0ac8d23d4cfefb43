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
