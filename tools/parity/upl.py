"""Parity of our UPL with the authors' code (tonyhuang2022/UPL, trainers/upltrainer.py, on Dassl).

    python -m tools.parity.upl --reference /path/to/UPL --dassl /path/to/Dassl.pytorch \\
        [--data ROOT --dataset KEY --clip WEIGHTS --images N]

UPL's pipeline is run piece by piece with its own classes and functions, on our train split and the same
CLIP weights; the reference config is UPL's own (``get_cfg_default`` + ``upl_train.extend_cfg`` +
``configs/trainers/UPLTrainer/rn50_ep50.yaml``, with ``DATASET.NUM_SHOTS`` = our ``TOPK``):

1. zero-shot logits of every train image (test transform) from UPL's ``CustomCLIP.zero_shot_forward``
   against our trainer's; the top-K-per-class pseudo-label set from UPL's
   ``select_top_k_similarity_per_class`` (on the probabilities, as ``get_info.py`` stores them and
   ``upl_train.py`` re-reads them) against ours, from the same probabilities and from each side's own;
2. one optimisation step on the first batch of the selected set (test transform: no augmentation): UPL's
   ``UPLTrainer.build_model`` + ``forward_backward`` (Dassl's optimizer and warm-up/cosine schedule) for
   each member of our prompt ensemble, its context set to our member's initial context, against our
   trainer's ``forward_backward`` (all members at once): the prompts' text features, the loss, the
   context gradient and the context after the step;
3. the learning rate of every epoch (UPL's Dassl scheduler against ours) and the test logits of the
   ensemble after the step (UPL averages its separately trained prompts' logits).

Shims (this process only): UPL's trainer is built without ``TrainerX.__init__`` (no data loaders: its
model registry starts empty and ``dm.dataset.classnames`` is ours); ``load_clip_to_cpu`` returns UPL's own
``clip.build_model`` on our weights; ``PREC`` is fp32 (UPL's default is fp16); a dataset UPL has no
template for gets ours in ``CUSTOM_TEMPLATES``; torch's ``LRScheduler`` accepts Dassl's ``verbose``
argument; ``imp``/``tkinter.tix`` (gone from recent Pythons) are empty modules if missing.
"""
import collections
import os.path as osp
import sys
import types
import warnings

import numpy as np
import torch

from fairclip.tools.parity import _inputs
from fairclip.tools.parity._common import (ParityReport, build_parser, check_reference, git_commit,
                                           reference_on_path, run)

REF_MODULES = ("trainers", "clip", "datasets", "configs", "evaluation", "upl_train")
RECIPE = osp.join("configs", "trainers", "UPLTrainer", "rn50_ep50.yaml")


def parser():
    p = build_parser("upl", "Compare our UPL with UPL's pseudo-labelling and one training step.")
    p.add_argument("--dassl", default="", help="path to a Dassl.pytorch checkout (UPL's code imports dassl)")
    return _inputs.add_world_args(p, images=16)


def _old_python_modules():
    """Empty stand-ins for modules UPL imports but never uses, when this Python no longer has them."""
    for name in ("imp", "tkinter.tix"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # both warn that they are deprecated
                __import__(name)
        except ImportError:
            sys.modules[name] = types.ModuleType(name)
            if name == "tkinter.tix":
                sys.modules[name].Tree = None


def _scheduler_accepts_verbose():
    base = torch.optim.lr_scheduler.LRScheduler
    original = base.__init__

    def init(self, optimizer, last_epoch=-1, verbose=None):
        original(self, optimizer, last_epoch)

    return _inputs.patched((base, "__init__", init))


def reference_cfg(ref, our_cfg):
    from configs.upl_default_config.upl_default import get_cfg_default
    from upl_train import extend_cfg

    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.merge_from_file(osp.join(ref, RECIPE))
    cfg.DATASET.NAME = our_cfg.DATASET.NAME
    cfg.DATASET.NUM_SHOTS = our_cfg.TRAINER.UPL.TOPK
    cfg.INPUT.SIZE = tuple(our_cfg.INPUT.SIZE)
    cfg.TRAINER.UPLTrainer.PREC = "fp32"
    cfg.USE_CUDA = False
    return cfg


def reference_trainer(module, cfg, classnames, state_dict):
    """UPL's ``UPLTrainer`` with its own ``build_model`` on our weights, without data loaders."""
    trainer = module.UPLTrainer.__new__(module.UPLTrainer)
    trainer._models, trainer._optims, trainer._scheds = (collections.OrderedDict() for _ in range(3))
    trainer._writer = None
    trainer.cfg = cfg
    trainer.device = torch.device("cpu")
    trainer.dm = types.SimpleNamespace(dataset=types.SimpleNamespace(classnames=list(classnames)))
    model = _inputs.reference_clip_model(state_dict)
    with _inputs.patched((module, "load_clip_to_cpu", lambda cfg: model)), _inputs.quiet():
        trainer.build_model()
    return trainer


def momentum_buffer(optimizer, param):
    """What SGD with momentum stepped along (gradient + weight decay x parameter on the first step)."""
    state = optimizer.state.get(param, {})
    buf = state.get("momentum_buffer")
    return (buf if buf is not None else torch.zeros_like(param)).detach().clone()


def lr_trace(optimizer, scheduler, epochs):
    trace = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stepping a schedule without training steps is the point here
        for _ in range(epochs):
            trace.append(optimizer.param_groups[0]["lr"])
            scheduler.step()
    return torch.tensor(trace, dtype=torch.float64)


def main(argv=None):
    args = parser().parse_args(argv)
    ref = check_reference(args.reference, osp.join("trainers", "upltrainer.py"))
    _inputs.resolve_world(args)
    report = ParityReport("UPL", "tonyhuang2022/UPL@{}".format(git_commit(ref)))
    state_dict = _inputs.state_dict_of(args.clip)
    with _inputs.workdir() as work:
        from fairclip.toolbox import build_optimizer, build_transform
        from fairclip.trainers._schedules import epoch_scheduler
        from fairclip.trainers.upl import select_top_k_per_class

        ours = _inputs.build_our_trainer("UPL", args, work)
        k = ours.cfg.TRAINER.UPL.TOPK
        n_members = ours.prompt_learner.n_prompts
        with _inputs.quiet():
            probs_ours, items = ours.zero_shot_train_probs()
            ours.zero_shot_train_probs = lambda: (probs_ours, items)  # computed once, selected from below
            selected = ours.build_pseudo_labelled_set()
            test_tfm = build_transform(ours.cfg, is_train=False)
        index = {item.impath: i for i, item in enumerate(items)}
        ours_set = {(index[d.impath], d.label) for d in selected}
        train_images = _inputs.load_images(items, test_tfm)
        batch_items = selected[:ours.cfg.DATALOADER.TRAIN_X.BATCH_SIZE]
        batch = {"img": _inputs.load_images(batch_items, test_tfm),
                 "label": torch.tensor([d.label for d in batch_items])}
        test_images = _inputs.load_images(_inputs.test_items(ours, args.images), test_tfm)
        ctx0 = ours.prompt_learner.ctx.detach().clone()
        with torch.no_grad():
            text_ours = ours.class_embeddings().cpu()

        _old_python_modules()
        with _inputs.restore_modules(REF_MODULES), reference_on_path(ref, REF_MODULES), \
                _inputs.on_path([args.dassl]), _scheduler_accepts_verbose():
            try:
                import trainers.upltrainer as module
                from trainers.utils import select_top_k_similarity_per_class
            except ImportError as exc:
                from fairclip.toolbox.errors import UserError

                raise UserError("cannot import {}/trainers/upltrainer.py ({}); pass --dassl /path/to/Dassl.pytorch"
                                .format(ref, exc)) from None
            cfg = reference_cfg(ref, ours.cfg)
            if cfg.DATASET.NAME not in module.CUSTOM_TEMPLATES:
                print("note: UPL has no template for {}; ours ({!r}) is added to its CUSTOM_TEMPLATES".format(
                    cfg.DATASET.NAME, ours.pseudo_templates()[0]))
            module.CUSTOM_TEMPLATES.setdefault(cfg.DATASET.NAME, ours.pseudo_templates()[0])
            template_ref = module.CUSTOM_TEMPLATES[cfg.DATASET.NAME]
            try:
                from dassl.data.transforms import build_transform as dassl_transform

                with _inputs.quiet():
                    ref_tfm = dassl_transform(cfg, is_train=False)
            except ImportError:
                ref_tfm = None

            # 1. zero-shot logits and the pseudo-label set
            members = [reference_trainer(module, cfg, ours.classnames, state_dict) for _ in range(n_members)]
            ref_images = _inputs.load_images(items, ref_tfm) if ref_tfm is not None else train_images
            with torch.no_grad():
                logits_ref = members[0].model.zero_shot_forward(ref_images, torch.device("cpu"))[0].float()
            probs_ref = torch.softmax(logits_ref, dim=1)
            names = np.array([str(i) for i in range(len(items))])
            with _inputs.quiet():
                chosen, _ = select_top_k_similarity_per_class(probs_ref, names, K=cfg.DATASET.NUM_SHOTS,
                                                              is_softmax=False)
            ref_set = {(int(path), int(label)) for path, label in chosen.items()}

            # 2. one step per member, from our initial contexts
            loss_ref, grads, after, text_ref, buffers = 0.0, [], [], [], []
            for e, member in enumerate(members):
                ctx = member.model.prompt_learner.ctx
                ctx.data.copy_(ctx0[e])
                with torch.no_grad():
                    text_ref.append(torch.nn.functional.normalize(
                        member.model.text_encoder(member.model.prompt_learner(), member.model.tokenized_prompts),
                        dim=-1))
                member.batch_idx, member.num_batches = 0, 2
                loss_ref += member.forward_backward(dict(batch))["loss"]
                grads.append(ctx.grad.detach().clone())
                buffers.append(momentum_buffer(member._optims["prompt_learner"], ctx))
                after.append(ctx.detach().clone())
            lr_step_ref = members[0].get_current_lr()
            with torch.no_grad():
                test_ref = sum(m.model(test_images)[0] for m in members) / len(members)

            # 3. the learning rate of every epoch
            probe = torch.nn.Linear(1, 1)
            ref_opt = module.build_optimizer(probe, cfg.OPTIM)
            with _inputs.quiet():
                lr_ref = lr_trace(ref_opt, module.build_lr_scheduler(ref_opt, cfg.OPTIM), cfg.OPTIM.MAX_EPOCH)

        # Our step on the same batch.
        ours.before_epoch()
        ours.batch_idx, ours.num_batches = 0, 2
        lr_step_ours = ours.get_current_lr()
        loss_ours = float(ours.forward_backward(dict(batch))["loss"])
        our_opt = build_optimizer(torch.nn.Linear(1, 1), ours.cfg.OPTIM)
        lr_ours = lr_trace(our_opt, epoch_scheduler(our_opt, ours.cfg.OPTIM), ours.cfg.OPTIM.MAX_EPOCH)
        ours._eval_text = None
        with torch.no_grad():
            test_ours = ours.model_inference(test_images).cpu()

        if ref_tfm is not None:
            report.tensors("train images: ours vs Dassl's test transform", train_images, ref_images, args.atol)
        _inputs.compare_sets(report, "pseudo-label template", ours.pseudo_templates(), [template_ref])
        report.tensors("zero-shot train probabilities", probs_ours, probs_ref, args.atol)
        rows, labels = select_top_k_per_class(probs_ref, k)
        _inputs.compare_sets(report, "top-{} set, same probabilities".format(k),
                             zip(rows.tolist(), labels.tolist()), ref_set)
        _inputs.compare_sets(report, "top-{} set, each side's own".format(k), ours_set, ref_set)
        report.tensors("prompt text features ({} member(s))".format(n_members), text_ours, torch.stack(text_ref),
                       args.atol)
        report.scalar("loss, batch of {} (sum over members)".format(len(batch_items)), loss_ours, loss_ref, args.atol)
        grads = torch.stack(grads)
        grad_tol = _inputs.round_tol(args.atol * max(1.0, grads.abs().max().item()))  # relative to the gradient's size
        report.tensors("context gradient", ours.prompt_learner.ctx.grad, grads, grad_tol)
        report.tensors("context after the step", ours.prompt_learner.ctx.detach(), torch.stack(after), args.atol)
        report.scalar("lr of the step", lr_step_ours, lr_step_ref, 1e-12)
        report.tensors("SGD step direction (momentum buffer)", momentum_buffer(ours.optim, ours.prompt_learner.ctx),
                       torch.stack(buffers), grad_tol)
        report.tensors("lr of each of {} epochs".format(len(lr_ours)), lr_ours, lr_ref, 1e-12)
        for name, mine, theirs in [
                ("recipe: batch size", ours.cfg.DATALOADER.TRAIN_X.BATCH_SIZE, cfg.DATALOADER.TRAIN_X.BATCH_SIZE),
                ("recipe: context tokens", ours.prompt_learner.n_ctx, cfg.TRAINER.UPLTrainer.N_CTX),
                ("recipe: SGD momentum", ours.cfg.OPTIM.MOMENTUM, cfg.OPTIM.MOMENTUM),
                ("recipe: weight decay", ours.cfg.OPTIM.WEIGHT_DECAY, cfg.OPTIM.WEIGHT_DECAY)]:
            report.scalar(name, mine, theirs, 0)
        report.tensors("test logits, ensemble mean", test_ours, test_ref, _inputs.round_tol(args.atol * ours.logit_scale))
        report.agreement("test predictions", test_ours.argmax(1), test_ref.argmax(1))
        _inputs.describe_inputs(ours, args, "{} train images (zero-shot, selection), a batch of {} selected, {} test "
                                "images".format(len(items), len(batch_items), len(test_images)))
    return report.finish(args.json)


if __name__ == "__main__":
    run(main)
