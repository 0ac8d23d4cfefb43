"""Parity of our MUST trainer with the authors' code (salesforce/MUST), step by step.

    python -m tools.parity.must --reference /path/to/MUST [--tune layernorm|visual] [--balance batch|running]
                                [--steps 2] [--batch-size 8] [--root DATA --clip CLIP] [KEY VALUE ...]

Both sides start from the same CLIP (the synthetic world's tiny CLIP by default) and see the same fixed
views. The reference runs as released: its ``clip_classifier`` builds the text classifier from our
templates and class names (written to JSON files in its format), ``ModelEma`` is the teacher,
``create_optimizer`` with ``LayerDecayValueAssigner`` the optimiser, ``cosine_scheduler`` the learning
rates, and ``train_one_epoch`` runs the steps (``args.mask`` off: our MUST has no masked-image-modelling
branch). Observed, never changed: the teacher's logits (a forward hook), the loss terms (the reference's
``log_writer`` interface), gradients, learning rates and parameters (optimizer step hooks) and the EMA
weights after each step. Our side is ``trainers/must.py``'s ``forward_backward`` on the same batches.

``--tune layernorm`` (our default) restricts the reference to the visual LayerNorms and the classifier,
as our MUST trains them; ``--tune visual`` compares the authors' full fine-tuning of the image tower
with ``TRAINER.MUST.TUNE visual``. ``--balance running`` compares the running-mean balance term MUST
uses from 512 classes on (the reference's ``args.nb_classes`` is set to 512 to take that branch).
Exit status 1 when a row is beyond its tolerance, 2 on bad input.
"""
import contextlib
import tempfile
import types

import torch

from fairclip.tools.parity._common import (
    ParityReport, build_parser, git_commit, reference_on_path, run)
from fairclip.tools.parity._selftraining import (
    StepRecorder, add_world_arguments, build_ours, checked_start, compare_lr_schedule, compare_named, compare_update,
    cpu_synchronize, fixed_views, legacy_imports, lr_trace, map_names, ours_name, quiet, reference_text_files,
    restored_modules, scaled, split_batches, total_steps)

MARKER = "engine_self_training.py"
REF_MODULES = ("clip", "model", "ema", "optim_factory", "utils", "engine_self_training", "build_dataset")


def parse_args(argv=None):
    parser = build_parser("must", __doc__.split("\n")[0])
    parser.add_argument("--tune", default="layernorm", choices=("layernorm", "visual"),
                        help="what both sides train: the visual LayerNorms + classifier (our MUST) or the whole image "
                             "tower + classifier (the authors'); default layernorm")
    parser.add_argument("--balance", default="batch", choices=("batch", "running"),
                        help="class-balance form compared: batch mean (MUST below 512 classes) or running mean")
    parser.add_argument("--threshold", type=float, default=0.99,
                        help="TRAINER.MUST.CONF_THRESHOLD for both sides (default 0.99: the synthetic world's tiny "
                             "CLIP is so confident that MUST's 0.3-0.7 would mark every sample; 0.99 gives both kinds)")
    add_world_arguments(parser)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------- our side
def run_ours(trainer, batches):
    """Per step: teacher logits, pseudo-labels and mask, loss terms, EMA decay; gradients, learning rates
    and parameters around the update; the teacher's weights after the step."""
    from fairclip.trainers.must import confident_pseudo_labels

    model, c = trainer.model, trainer.cfg.TRAINER.MUST
    named = list(model.named_parameters())
    out = {"classifier_init": model.classifier.detach().clone(),
           "lr_trace": lr_trace(trainer.optim, trainer.sched, named, total_steps(trainer)), "steps": []}
    recorder = StepRecorder(trainer.optim, named)
    trainer.set_model_mode("train")
    trainer.epoch, trainer.num_batches = 0, len(trainer.train_loader_x)
    trainer.before_epoch()
    try:
        for step, (weak, strong, labels) in enumerate(batches):
            trainer.batch_idx = step
            with torch.no_grad():
                logits = model.teacher_logits(weak).float()
            pseudo, mask = confident_pseudo_labels(torch.softmax(logits, dim=1), c.CONF_THRESHOLD)
            losses = trainer.forward_backward({"img": weak, "img2": strong, "label": labels})
            out["steps"].append({
                "teacher_logits": logits, "pseudo": pseudo, "mask": mask,
                "loss_st": float(losses["loss_st"]), "loss_fair": float(losses["loss_bal"]),
                "ema_decay": float(trainer._epoch_stats["ema_decay"]),
                "ema": {n: t.detach().clone() for n, t in model.teacher.tensors().items()},
            })
    finally:
        recorder.close()
    recorder.attach(out["steps"])
    return out


# ---------------------------------------------------------------------------- the reference
def load_reference(path):
    with restored_modules(REF_MODULES), legacy_imports(), reference_on_path(path, REF_MODULES), \
            quiet("importing the MUST reference"):
        import ema
        import engine_self_training
        import model
        import optim_factory
        import utils
    return types.SimpleNamespace(model=model, ema=ema, optim_factory=optim_factory, utils=utils,
                                 engine=engine_self_training)


class _StepLog:
    """The reference's ``log_writer`` interface: ``update(**scalars, head=...)`` during a step, then
    ``set_step()`` after the optimiser and EMA updates; keeps each step's scalars and EMA weights."""

    def __init__(self, model_ema):
        self.model_ema, self.steps, self.current = model_ema, [], {}

    def update(self, head="scalar", step=None, **kwargs):
        for k, v in kwargs.items():
            self.current[k] = float(v)

    def set_step(self, step=None):
        self.current["ema_decay"] = float(self.model_ema.decay)  # the decay this step's EMA update used
        self.current["ema"] = {n: p.detach().clone() for n, p in self.model_ema.ema.named_parameters()}
        self.steps.append(self.current)
        self.current = {}


def run_reference(ref, trainer, batches, args, workdir):
    """The reference's own training step on ``batches``, configured with our trainer's values."""
    cfg, c = trainer.cfg, trainer.cfg.TRAINER.MUST
    dataset, template_file, class_file = reference_text_files(trainer, workdir)
    ns = types.SimpleNamespace(
        template=template_file, classname=class_file, dataset=dataset, clip_model=cfg.MODEL.BACKBONE.PATH,
        device="cpu", mask=False, model_ema_decay=c.EMA_DECAY, opt="adamw", opt_eps=1e-8, opt_betas=None,
        weight_decay=cfg.OPTIM.WEIGHT_DECAY, lr=cfg.OPTIM.LR, min_lr=c.MIN_LR, layer_decay=c.LAYER_DECAY,
        nb_classes=trainer.num_classes if args.balance == "batch" else max(512, trainer.num_classes),
        momentum=0.9)
    train_config = {"model_ema_decay_init": c.EMA_DECAY_INIT, "warm_it": c.EMA_WARMUP_ITERS,
                    "conf_threshold": c.CONF_THRESHOLD, "w_fair": c.BALANCE_WEIGHT}
    with quiet("the MUST reference"):
        model = ref.model.clip_classifier(ns)
        if args.tune == "layernorm":  # our MUST trains the LayerNorms and the classifier only
            for name, p in model.named_parameters():
                p.requires_grad_(".ln_" in name or name.endswith("visual.classifier"))
        classifier_init = model.model.visual.classifier.detach().clone()
        model_ema = ref.ema.ModelEma(model, decay=ns.model_ema_decay, resume="")
        num_layers = model.model.visual.transformer.layers
        assigner = ref.optim_factory.LayerDecayValueAssigner(
            [ns.layer_decay ** (num_layers + 1 - i) for i in range(num_layers + 2)]) if ns.layer_decay < 1.0 else None
        optimizer = ref.optim_factory.create_optimizer(
            ns, model, get_num_layer=assigner.get_layer_id if assigner else None,
            get_layer_scale=assigner.get_scale if assigner else None)
        total = total_steps(trainer)
        epochs = cfg.OPTIM.MAX_EPOCH
        schedule = ref.utils.cosine_scheduler(ns.lr, ns.min_lr, epochs, total // epochs)
        named = list(model.named_parameters())
        scale = {n: g["lr_scale"] for g in optimizer.param_groups for n, p in named if any(p is q for q in g["params"])}
        lr_trace = {n: torch.as_tensor(schedule, dtype=torch.float64) * s for n, s in scale.items()}
        teacher_logits = []
        hook = model_ema.ema.register_forward_hook(lambda m, i, o: teacher_logits.append(o.detach().clone()))
        recorder = StepRecorder(optimizer, named)
        log = _StepLog(model_ema)
        loader = [((weak, strong, torch.zeros(1)), labels) for weak, strong, labels in batches]
        # The reference gathers the batch over processes; with one process its own branch returns the input.
        gather = ref.utils.all_gather_with_grad
        ref.utils.all_gather_with_grad = lambda t: t
        try:
            with cpu_synchronize():
                ref.engine.train_one_epoch(model, ns, train_config, loader, optimizer, contextlib.suppress,
                                           torch.device("cpu"), 0, None, log_writer=log, start_steps=0,
                                           lr_schedule_values=schedule, model_ema=model_ema)
        finally:
            ref.utils.all_gather_with_grad = gather
            hook.remove()
            recorder.close()
    steps = []
    for s, logits in enumerate(teacher_logits):
        probs = torch.softmax(logits, dim=-1)
        conf, pseudo = probs.max(-1)
        steps.append({"teacher_logits": logits, "pseudo": pseudo, "mask": conf > c.CONF_THRESHOLD,
                      "loss_st": log.steps[s]["loss_st"], "loss_fair": log.steps[s]["loss_fair"],
                      "ema_decay": log.steps[s]["ema_decay"],
                      "ema": log.steps[s]["ema"], "grads": recorder.grads[s], "lrs": recorder.lrs[s],
                      "after": recorder.after[s]})
    return {"classifier_init": classifier_init, "lr_trace": lr_trace, "steps": steps}


GROUPS = [("LayerNorms", lambda n: ".ln_" in n), ("classifier", lambda n: n == "classifier"),
          ("other visual weights", lambda n: n.startswith("clip.visual.") and ".ln_" not in n)]


def compare(report, ours, ref, atol):
    report.tensors("text classifier (initial weights)", ours["classifier_init"], ref["classifier_init"].t(), atol)
    compare_lr_schedule(report, ours["lr_trace"], ref["lr_trace"])
    if len(ours["steps"]) != len(ref["steps"]):
        report.rows.append(("steps run", "count", "{} vs {}".format(len(ours["steps"]), len(ref["steps"])), "equal",
                            False))
    keep = None
    transpose = ("classifier",)  # the reference's classifier is [D, K], ours [K, D]
    for s, (o, r) in enumerate(zip(ours["steps"], ref["steps"])):
        label = "step {}:".format(s)
        scaled(report, label + " teacher logits", o["teacher_logits"], r["teacher_logits"], atol)
        report.agreement(label + " pseudo-labels", o["pseudo"], r["pseudo"])
        report.agreement(label + " confidence mask ({}/{} confident)".format(int(o["mask"].sum()), o["mask"].numel()),
                         o["mask"], r["mask"])
        report.scalar(label + " EMA decay", o["ema_decay"], r["ema_decay"], 1e-12)
        scaled(report, label + " loss_st (masked CE)", o["loss_st"], r["loss_st"], atol)
        scaled(report, label + " loss_fair (class balance)", o["loss_fair"], r["loss_fair"], atol)
        keep = compare_update(report, label, o, r, atol, GROUPS, keep, transpose)
        ref_ema = {k: v for k, v in map_names(r["ema"], ours_name, transpose).items() if k in o["ema"]}
        compare_named(report, label + " EMA teacher", o["ema"], ref_ema, atol, GROUPS, keep=keep)


def main(argv=None):
    args, path = checked_start(parse_args, argv, MARKER)
    trainer = build_ours("MUST", args, ["TRAINER.MUST.TUNE", args.tune, "TRAINER.MUST.BALANCE", args.balance,
                                        "TRAINER.MUST.CONF_THRESHOLD", args.threshold])
    weak, strong, labels, _ = fixed_views(trainer, args.batch_size * args.steps, args.seed)
    batches = split_batches(args.steps, args.batch_size, weak, strong, labels)
    ref_module = load_reference(path)
    with tempfile.TemporaryDirectory(prefix="parity-must-ref-") as workdir:
        ref = run_reference(ref_module, trainer, batches, args, workdir)
    ours = run_ours(trainer, batches)
    report = ParityReport("MUST ({}, {} balance, {} steps of {})".format(args.tune, args.balance, args.steps,
                                                                        args.batch_size),
                          "salesforce/MUST @ {}".format(git_commit(path)))
    compare(report, ours, ref, args.atol)
    return report.finish(args.json)


if __name__ == "__main__":
    run(main)
