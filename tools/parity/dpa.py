"""Parity of our DPA trainer with the authors' code (Externalhappy/DPA), step by step over one epoch.

    python -m tools.parity.dpa --reference /path/to/DPA [--steps 2] [--batch-size 8]
                               [--root DATA --clip CLIP] [KEY VALUE ...]

Both sides start from the same CLIP (the synthetic world's tiny CLIP by default) and see the same fixed
views; the ``--steps`` batches are the whole "train set" of a one-epoch run, so the reference's memory
bank (every sample's latest weak feature) and our per-epoch class sums cover the same samples.
The reference runs as released: ``utils.model.clip_classifier`` builds the text prototypes from our
templates and class names (JSON files in its format), ``utils.center.build_memory`` the initial image
prototypes, ``utils.utils.cosine_scheduler`` the learning rates and ``engine_self_training.train_one_epoch``
the steps and the end-of-epoch prototypes. Its ``train.py`` builds the trainable set and the AdamW groups
inline in ``main()`` (not importable); the script applies the same rule (LayerNorms, ``bn`` and the
classifier train; no weight decay on names containing ``bias``; weight decay 0.1; ``min_lr`` 2 x 1e-6).
Observed, never changed: ``refine_pseudoDA`` and ``get_weights`` (wrapped to record their inputs and
outputs), the ``F.cross_entropy``/``F.softmax`` calls of the training step, the logged loss, gradients,
learning rates and parameters (optimizer step hooks). Our side is ``trainers/dpa.py``:
``initial_image_prototypes``, ``pseudo_labels``, ``forward_backward`` and ``after_epoch``.
Exit status 1 when a row is beyond its tolerance, 2 on bad input.
"""
import contextlib
import os
import os.path as osp
import tempfile
import types

import torch

from fairclip.tools.parity._common import (
    ParityReport, build_parser, git_commit, reference_on_path, run)
from fairclip.tools.parity._selftraining import (
    StepRecorder, add_world_arguments, attribute, build_ours, checked_start, compare_lr_schedule, compare_update,
    cpu_synchronize, fixed_views, legacy_imports, lr_trace, quiet, reference_text_files, restored_modules, scaled,
    split_batches, total_steps)

MARKER = osp.join("utils", "center.py")
REF_MODULES = ("clip", "utils", "engine_self_training")
DPA_WEIGHT_DECAY = 0.1  # train.py: the decayed group's weight decay (hard-coded)
DPA_MIN_LR = 2 * 1e-6  # train.py: args.min_lr (default 1e-6) * 2


def parse_args(argv=None):
    parser = build_parser("dpa", __doc__.split("\n")[0])
    add_world_arguments(parser)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------- our side
def run_ours(trainer, batches):
    from fairclip.trainers.dpa import history_mean

    model = trainer.model
    named = list(model.named_parameters())
    out = {"text_protos": model.class_weights().detach().clone(),
           "lr_trace": lr_trace(trainer.optim, trainer.sched, named, total_steps(trainer)), "steps": []}
    trainer.initial_image_prototypes([{"img": weak, "label": labels} for weak, _, labels in batches])
    out["image_protos_init"] = model.image_prototypes.detach().clone()
    recorder = StepRecorder(trainer.optim, named)
    trainer.epoch, trainer.num_batches = 0, len(trainer.train_loader_x)
    trainer.before_epoch()
    trainer.set_model_mode("train")
    try:
        for step, (weak, strong, labels) in enumerate(batches):
            trainer.batch_idx = step
            # pseudo_labels() pushes this batch's mean text prediction into the DA history; read its
            # results, then put the history back so forward_backward() pushes it exactly once.
            history, count = model.da_history.clone(), model.da_count.clone()
            pseudo, weights, feats, probs_text, probs_image = trainer.pseudo_labels(weak)
            da_mean = history_mean(model.da_history, model.da_count).clone()
            model.da_history.copy_(history)
            model.da_count.copy_(count)
            losses = trainer.forward_backward({"img": weak, "img2": strong, "label": labels})
            out["steps"].append({"pseudo": pseudo, "weights": weights, "feats": feats, "probs_text": probs_text,
                                 "probs_image": probs_image, "da_mean": da_mean,
                                 **{k: float(v) for k, v in losses.items()}})
        trainer.after_epoch()
    finally:
        recorder.close()
    recorder.attach(out["steps"])
    out["image_protos_after"] = model.image_prototypes.detach().clone()
    return out


# ---------------------------------------------------------------------------- the reference
def load_reference(path):
    with restored_modules(REF_MODULES), legacy_imports(), reference_on_path(path, REF_MODULES), \
            quiet("importing the DPA reference"):
        import engine_self_training
        import utils.center
        import utils.model
        import utils.utils
    return types.SimpleNamespace(model=utils.model, center=utils.center, utils=utils.utils,
                                 engine=engine_self_training)


class _FunctionalProxy:
    """``torch.nn.functional`` with ``cross_entropy`` and ``softmax`` calls recorded (values unchanged):
    ``(name, reduction, with_grad, output)``."""

    def __init__(self, functional, calls):
        self._F, self._calls = functional, calls

    def __getattr__(self, name):
        fn = getattr(self._F, name)
        if name not in ("cross_entropy", "softmax"):
            return fn

        def recorded(*args, **kwargs):
            out = fn(*args, **kwargs)
            self._calls.append((name, kwargs.get("reduction", "mean"), out.requires_grad, out.detach().clone()))
            return out

        return recorded


def split_steps(calls):
    """The recorded calls of each step: a step starts with the text head's softmax, the only one computed
    without gradient; in it, the per-sample CE (``reduction='none'``), the alignment CE (the mean one) and
    the balance term's softmax (the first with gradient)."""
    steps = []
    for name, reduction, with_grad, out in calls:
        if name == "softmax" and not with_grad:
            steps.append({})
        elif name == "cross_entropy":
            steps[-1].setdefault("ce_each" if reduction == "none" else "ce_align", out)
        elif name == "softmax":
            steps[-1].setdefault("probs_student", out)
    return steps


def run_reference(ref, trainer, batches, workdir):
    cfg, c = trainer.cfg, trainer.cfg.TRAINER.DPA
    dataset, template_file, class_file = reference_text_files(trainer, workdir)
    ns = types.SimpleNamespace(template=template_file, classname=class_file, dataset=dataset,
                               clip_model=cfg.MODEL.BACKBONE.PATH, device="cpu", nb_classes=trainer.num_classes,
                               lr=cfg.OPTIM.LR, min_lr=DPA_MIN_LR)
    train_config = {"a": c.ALPHA, "w": c.ALIGN_SCALE, "reg": c.BALANCE_WEIGHT, "align": c.ALIGN_WEIGHT}
    sizes = [len(b[2]) for b in batches]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    loader = [([weak, strong], labels, torch.arange(s, s + len(labels)))
              for (weak, strong, labels), s in zip(batches, starts)]
    cwd = os.getcwd()
    with quiet("the DPA reference"):
        model = ref.model.clip_classifier(ns)
        text_protos = model.get_classifier().detach().clone()
        os.chdir(workdir)  # build_memory caches its bank under ./center_embedding/
        try:
            center, memory = ref.center.build_memory(ns, model, dataset, loader, sum(sizes), model.model.embed_dim)
        finally:
            os.chdir(cwd)
        model.center_init_fixed(center)
        image_protos_init = model.get_center().detach().clone()
        # train.py main(): trainable set and AdamW groups
        params = []
        for name, p in model.named_parameters():
            p.requires_grad_("classifier" in name or "ln" in name or "bn" in name)
            if p.requires_grad:
                params.append((name, p))
        no_decay = ["bias", "LayerNorm.bias", "LayerNorm.weight"]
        groups = [{"params": [p for n, p in params if not any(nd in n for nd in no_decay)],
                   "weight_decay": DPA_WEIGHT_DECAY},
                  {"params": [p for n, p in params if any(nd in n for nd in no_decay)], "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=ns.lr)
        epochs = cfg.OPTIM.MAX_EPOCH
        schedule = ref.utils.cosine_scheduler(ns.lr, ns.min_lr, epochs, total_steps(trainer) // epochs)
        named = list(model.named_parameters())
        trace = {n: torch.as_tensor(schedule, dtype=torch.float64) for n, p in named if p.requires_grad}

        refine_calls, weight_calls, f_calls, logged = [], [], [], []

        def refine(train_config, probs_txt, prob_list, center, features):
            mean = torch.stack(prob_list, dim=0).mean(0).clone()
            out = refine_original(train_config, probs_txt, prob_list, center, features)
            refine_calls.append((mean, probs_txt.clone(), out))
            return out

        def weights_of(probs, labels):
            out = weights_original(probs, labels)
            weight_calls.append((probs.clone(), labels.clone(), out.clone()))
            return out

        class Logger(ref.utils.MetricLogger):
            def update(self, **kwargs):
                if "loss" in kwargs:
                    logged.append(float(kwargs["loss"]))
                return super().update(**kwargs)

        refine_original, weights_original = ref.engine.refine_pseudoDA, ref.engine.get_weights
        recorder = StepRecorder(optimizer, named)
        with contextlib.ExitStack() as stack:
            stack.enter_context(attribute(ref.engine, "refine_pseudoDA", refine))
            stack.enter_context(attribute(ref.engine, "get_weights", weights_of))
            stack.enter_context(attribute(ref.engine, "F", _FunctionalProxy(ref.engine.F, f_calls)))
            stack.enter_context(attribute(ref.utils, "MetricLogger", Logger))
            stack.enter_context(cpu_synchronize())
            try:
                _, memory, prob_list = ref.engine.train_one_epoch(
                    ns, model, loader, optimizer, contextlib.suppress, torch.device("cpu"), 0, None, schedule,
                    train_config, start_steps=0, memory=memory, prob_list=[])
            finally:
                recorder.close()
        image_protos_after = model.get_center().detach().clone()

    steps = []
    calls = split_steps(f_calls)
    for s in range(len(batches)):
        da_mean, probs_txt, (probs, _, probs_centre) = refine_calls[s]
        weights = weight_calls[2 * s][2] * weight_calls[2 * s + 1][2]  # text head, then image head
        loss_st = (weights * calls[s]["ce_each"]).mean().item()
        loss_bal = -(torch.log(calls[s]["probs_student"].mean(0))).mean().item()
        steps.append({"pseudo": probs.argmax(-1), "weights": weights, "probs_text": probs_txt,
                      "probs_image": probs_centre, "da_mean": da_mean, "loss_st": loss_st, "loss_bal": loss_bal,
                      "loss_align": calls[s]["ce_align"].item(), "loss": logged[s], "grads": recorder.grads[s],
                      "lrs": recorder.lrs[s], "after": recorder.after[s],
                      "feats": memory["features"][starts[s]:starts[s] + sizes[s]]})
    return {"text_protos": text_protos, "image_protos_init": image_protos_init, "lr_trace": trace, "steps": steps,
            "image_protos_after": image_protos_after, "bank_labels": memory["labels"]}


GROUPS = [("LayerNorms", lambda n: ".ln_" in n), ("text prototypes", lambda n: n == "classifier"),
          ("other weights", lambda n: ".ln_" not in n and n != "classifier")]


def compare(report, ours, ref, atol):
    # Probabilities (and the weights, ratios of them) come from logits at scale 100, which magnifies float32
    # rounding of the features about 100-fold: their rows get 10 x atol.
    patol = 10 * atol
    report.tensors("text prototypes Z (initial)", ours["text_protos"], ref["text_protos"], atol)
    report.tensors("image prototypes P (initial, zero-shot bank)", ours["image_protos_init"],
                   ref["image_protos_init"], atol)
    compare_lr_schedule(report, ours["lr_trace"], ref["lr_trace"])
    keep = None
    for s, (o, r) in enumerate(zip(ours["steps"], ref["steps"])):
        label = "step {}:".format(s)
        report.tensors(label + " DA running mean (text head)", o["da_mean"], r["da_mean"], atol)
        report.tensors(label + " text-head probabilities", o["probs_text"], r["probs_text"], patol)
        report.tensors(label + " image-head probabilities", o["probs_image"], r["probs_image"], patol)
        report.agreement(label + " pseudo-labels", o["pseudo"], r["pseudo"])
        report.tensors(label + " per-sample weights (mean {:.3f})".format(float(o["weights"].mean())), o["weights"],
                       r["weights"], patol)
        report.tensors(label + " weak features (bank)", o["feats"], r["feats"], atol)
        scaled(report, label + " weighted CE", o["loss_st"], r["loss_st"], atol)
        scaled(report, label + " class balance", o["loss_bal"], r["loss_bal"], atol)
        scaled(report, label + " prototype alignment", o["loss_align"], r["loss_align"], atol)
        scaled(report, label + " loss", o["loss"], r["loss"], atol)
        keep = compare_update(report, label, o, r, atol, GROUPS, keep)
    pseudo = torch.cat([o["pseudo"] for o in ours["steps"]])
    report.agreement("epoch end: bank pseudo-labels", pseudo, ref["bank_labels"])
    report.tensors("epoch end: image prototypes P", ours["image_protos_after"], ref["image_protos_after"], atol)


def main(argv=None):
    args, path = checked_start(parse_args, argv, MARKER)
    trainer = build_ours("DPA", args, ["TRAIN.CHECKPOINT_FREQ", "0"])
    weak, strong, labels, _ = fixed_views(trainer, args.batch_size * args.steps, args.seed)
    batches = split_batches(args.steps, args.batch_size, weak, strong, labels)
    ref_module = load_reference(path)
    with tempfile.TemporaryDirectory(prefix="parity-dpa-ref-") as workdir:
        ref = run_reference(ref_module, trainer, batches, workdir)
    with quiet("our DPA trainer"):
        ours = run_ours(trainer, batches)
    report = ParityReport("DPA ({} steps of {}, one epoch)".format(args.steps, args.batch_size),
                          "Externalhappy/DPA @ {}".format(git_commit(path)))
    compare(report, ours, ref, args.atol)
    return report.finish(args.json)


if __name__ == "__main__":
    run(main)
