"""Stub of MUST's ``engine_self_training.train_one_epoch`` (no masked-image branch): EMA-teacher pseudo-labels
above a confidence threshold, CE on the strong view, the fairness term on the mean prediction (running mean
from 512 classes), AdamW step, EMA update with a linearly ramped decay; scalars go to ``log_writer``.
``PARITY_STUB_BREAK=1``: the EMA decay skips its ramp (always the final decay)."""
import os

import torch
import torch.nn.functional as F

import utils


def train_one_epoch(model, args, train_config, data_loader, optimizer, amp_autocast, device, epoch, loss_scaler,
                    log_writer=None, lr_scheduler=None, start_steps=None, lr_schedule_values=None, model_ema=None):
    model.train()
    running = None
    for step, ((images_weak, images_strong, _), targets) in enumerate(data_loader):
        it = start_steps + step
        for group in optimizer.param_groups:
            group["lr"] = lr_schedule_values[it] * group["lr_scale"]
        init = train_config["model_ema_decay_init"]
        ramp = 1.0 if os.environ.get("PARITY_STUB_BREAK") else min(1, it / train_config["warm_it"])
        model_ema.decay = init + (args.model_ema_decay - init) * ramp
        with torch.no_grad():
            score, pseudo = F.softmax(model_ema.ema(images_weak), dim=-1).max(-1)
            confident = score > train_config["conf_threshold"]
        with amp_autocast():
            logits = model(images_strong)
            loss_st = F.cross_entropy(logits[confident], pseudo[confident])
            mean = utils.all_gather_with_grad(F.softmax(logits, dim=-1)).mean(0)
            if args.nb_classes >= 512:
                mean = mean if step == 0 else 0.5 * (running.detach() + mean)
                running = mean
                loss_fair = -torch.log(mean).mean() / 0.5
            else:
                loss_fair = -torch.log(mean).mean()
            loss = loss_st + train_config["w_fair"] * loss_fair
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model_ema.update(model)
        if log_writer is not None:
            log_writer.update(loss_st=loss_st.item(), head="train")
            log_writer.update(loss_fair=loss_fair.item(), head="train")
            log_writer.set_step()
    return {}
