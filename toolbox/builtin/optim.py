"""``build_optimizer`` / ``build_lr_scheduler`` mirroring ``dassl.optim``.

Fixed here for modern torch: warmup schedulers do not pass the removed ``verbose`` argument, and
their ``state_dict`` stores the successor scheduler's state (not the pickled object), so checkpoints
load under ``torch.load(weights_only=True)`` too.
"""
import warnings

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import _LRScheduler

AVAI_OPTIMS = ["adam", "amsgrad", "sgd", "rmsprop", "radam", "adamw"]
AVAI_SCHEDS = ["single_step", "multi_step", "cosine"]


def build_optimizer(model, optim_cfg, param_groups=None):
    """``model`` is an ``nn.Module`` or an iterable of parameters / parameter groups."""
    optim = optim_cfg.NAME
    lr = optim_cfg.LR
    weight_decay = optim_cfg.WEIGHT_DECAY
    momentum = optim_cfg.MOMENTUM
    sgd_dampening = optim_cfg.SGD_DAMPNING
    sgd_nesterov = optim_cfg.SGD_NESTEROV
    rmsprop_alpha = optim_cfg.RMSPROP_ALPHA
    adam_beta1 = optim_cfg.ADAM_BETA1
    adam_beta2 = optim_cfg.ADAM_BETA2
    staged_lr = optim_cfg.STAGED_LR
    new_layers = optim_cfg.NEW_LAYERS
    base_lr_mult = optim_cfg.BASE_LR_MULT

    if optim not in AVAI_OPTIMS:
        raise ValueError("optim must be one of {}, but got {}".format(AVAI_OPTIMS, optim))

    if param_groups is not None and staged_lr:
        warnings.warn("staged_lr will be ignored, if you need to use staged_lr, please bind it with param_groups yourself.")

    if param_groups is None:
        if staged_lr:
            if not isinstance(model, nn.Module):
                raise TypeError("When staged_lr is True, model given to build_optimizer() must be an instance of nn.Module")
            if isinstance(model, nn.DataParallel):
                model = model.module
            if isinstance(new_layers, str):
                if new_layers is None:
                    warnings.warn("new_layers is empty (staged_lr is useless)")
                new_layers = [new_layers]
            base_params, new_params = [], []
            for name, module in model.named_children():
                if name in new_layers:
                    new_params += [p for p in module.parameters()]
                else:
                    base_params += [p for p in module.parameters()]
            param_groups = [
                {"params": base_params, "lr": lr * base_lr_mult},
                {"params": new_params},
            ]
        else:
            param_groups = model.parameters() if isinstance(model, nn.Module) else model

    if optim == "adam":
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=weight_decay, betas=(adam_beta1, adam_beta2))
    if optim == "amsgrad":
        return torch.optim.Adam(
            param_groups, lr=lr, weight_decay=weight_decay, betas=(adam_beta1, adam_beta2), amsgrad=True
        )
    if optim == "sgd":
        return torch.optim.SGD(
            param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay, dampening=sgd_dampening,
            nesterov=sgd_nesterov,
        )
    if optim == "rmsprop":
        return torch.optim.RMSprop(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay, alpha=rmsprop_alpha)
    if optim == "radam":
        return torch.optim.RAdam(param_groups, lr=lr, weight_decay=weight_decay, betas=(adam_beta1, adam_beta2))
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay, betas=(adam_beta1, adam_beta2))


class _BaseWarmupScheduler(_LRScheduler):
    """Use the warmup rule for ``warmup_epoch`` steps, then delegate to ``successor``."""

    def __init__(self, optimizer, successor, warmup_epoch, last_epoch=-1):
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        raise NotImplementedError

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step(epoch)
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step(epoch)

    def state_dict(self):
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "successor")}
        state["successor_state"] = self.successor.state_dict()
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        successor_state = state_dict.pop("successor_state", None)
        state_dict.pop("successor", None)  # a Dassl-written checkpoint pickles the object itself
        self.__dict__.update(state_dict)
        if successor_state is not None:
            self.successor.load_state_dict(successor_state)


class ConstantWarmupScheduler(_BaseWarmupScheduler):
    def __init__(self, optimizer, successor, warmup_epoch, cons_lr, last_epoch=-1):
        self.cons_lr = cons_lr
        super().__init__(optimizer, successor, warmup_epoch, last_epoch)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]


class LinearWarmupScheduler(_BaseWarmupScheduler):
    def __init__(self, optimizer, successor, warmup_epoch, min_lr, last_epoch=-1):
        self.min_lr = min_lr
        super().__init__(optimizer, successor, warmup_epoch, last_epoch)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        if self.last_epoch == 0:
            return [self.min_lr for _ in self.base_lrs]
        return [lr * self.last_epoch / self.warmup_epoch for lr in self.base_lrs]


def build_lr_scheduler(optimizer, optim_cfg):
    lr_scheduler = optim_cfg.LR_SCHEDULER
    stepsize = optim_cfg.STEPSIZE
    gamma = optim_cfg.GAMMA
    max_epoch = optim_cfg.MAX_EPOCH

    if lr_scheduler not in AVAI_SCHEDS:
        raise ValueError("scheduler must be one of {}, but got {}".format(AVAI_SCHEDS, lr_scheduler))

    if lr_scheduler == "single_step":
        if isinstance(stepsize, (list, tuple)):
            stepsize = stepsize[-1]
        if not isinstance(stepsize, int):
            raise TypeError("For single_step lr_scheduler, stepsize must be an integer, but got {}".format(type(stepsize)))
        if stepsize <= 0:
            stepsize = max_epoch
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=stepsize, gamma=gamma)
    elif lr_scheduler == "multi_step":
        if not isinstance(stepsize, (list, tuple)):
            raise TypeError("For multi_step lr_scheduler, stepsize must be a list, but got {}".format(type(stepsize)))
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(stepsize), gamma=gamma)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(max_epoch))

    if optim_cfg.WARMUP_EPOCH > 0:
        if not optim_cfg.WARMUP_RECOUNT:
            scheduler.last_epoch = optim_cfg.WARMUP_EPOCH
        if optim_cfg.WARMUP_TYPE == "constant":
            scheduler = ConstantWarmupScheduler(optimizer, scheduler, optim_cfg.WARMUP_EPOCH, optim_cfg.WARMUP_CONS_LR)
        elif optim_cfg.WARMUP_TYPE == "linear":
            scheduler = LinearWarmupScheduler(optimizer, scheduler, optim_cfg.WARMUP_EPOCH, optim_cfg.WARMUP_MIN_LR)
        else:
            raise ValueError("Unknown OPTIM.WARMUP_TYPE: {}".format(optim_cfg.WARMUP_TYPE))
    return scheduler
