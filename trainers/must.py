"""MUST-style self-training (Li et al., ICLR 2023) on CLIP ViT-B/32: by default LayerNorm-only.

Per batch: an EMA teacher labels the weak view; samples whose teacher confidence exceeds
``CONF_THRESHOLD`` give a cross-entropy target to the student's strong view; a class-balance term
(MUST's fairness regulariser ``-mean_k log pbar_k``: batch mean below 512 classes, running mean from 512)
keeps the predictions spread. The classifier is initialised from the template text embeddings.
"MUST-style": the authors fine-tune the whole image tower and add masked image modelling and a
global-local alignment term; here the visual LayerNorms and the classifier train (``TUNE layernorm``,
the budget every baseline of the comparison shares) or, with ``TUNE visual``, the whole image tower as
the authors do; the masked-image-modelling and alignment terms are left out either way
(docs/parity.md lists what matches the authors' code step by step and what differs).
MUST's layer-wise lr decay and per-iteration cosine (each layer's floor scaled with it) apply.
The teacher's decay ramps linearly from ``EMA_DECAY_INIT`` to ``EMA_DECAY`` over ``EMA_WARMUP_ITERS``.
Train-split labels are read only for the diagnostic pseudo-label accuracy.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call
from yacs.config import CfgNode as CN

from fairclip.toolbox import TRAINER_REGISTRY, build_optimizer
from fairclip.toolbox.errors import UserError

from . import _distributed
from ._clip_base import ClipTrainer, TrainableState, unfreeze_visual_layernorms
from ._losses import RunningMarginal, global_batch_mean, log_marginal_loss
from ._gpu_views import strong_view, weak_view
from ._schedules import iteration_cosine
from ._views import strong_transform, weak_transform


def add_config(cfg):
    c = cfg.TRAINER.MUST = CN()
    c.PREC = "fp32"  # fp32 or bf16 (autocast over fp32 master weights)
    c.STRONG_SCALE = (0.3, 1.0)  # MUST's train_crop_min 0.3
    c.RANDAUGMENT_N = 2  # MUST: timm rand-m9-mstd0.5-inc1; torchvision RandAugment(2, 9) stands in
    c.RANDAUGMENT_M = 9
    # Teacher confidence a pseudo-label needs. MUST tunes it per dataset (0.3-0.7, per_dataset/*.yaml);
    # 0.5 for the datasets it did not tune.
    c.CONF_THRESHOLD = 0.5
    c.EMA_DECAY_INIT = 0.99  # MUST's model_ema_decay_init (0.99 or 0.999 per dataset)
    c.EMA_DECAY = 0.9998  # MUST's model_ema_decay
    c.EMA_WARMUP_ITERS = 500  # MUST's warm_it (100-2000 per dataset): iterations of the linear decay ramp
    # Class-balance term: auto (MUST: batch mean below 512 classes, running mean from 512), batch,
    # running or none; weight 1 in MUST.
    c.BALANCE = "auto"
    c.BALANCE_WEIGHT = 1.0
    c.LOGIT_SCALE = 100.0
    # MUST scores 100 * <f, W> with W initialised unit-norm and then trained freely (not renormalised).
    c.NORMALIZE_CLASSIFIER = False
    c.LAYER_DECAY = 0.65  # MUST: lr of block i scaled by decay^(L + 1 - i) (1 = off)
    c.MIN_LR = 1e-6  # per-iteration cosine from OPTIM.LR down to MIN_LR, no warm-up (MUST)
    # What trains besides the classifier: "layernorm" (the visual LayerNorms; our MUST-style default, the
    # budget every baseline here shares) or "visual" (the whole image tower, as the authors' MUST does).
    c.TUNE = "layernorm"
    c.TEST_TEACHER = False  # evaluate the EMA teacher instead of the student (MUST logs both)
    # Diagnostics: evaluate the test split after every epoch for the history (never used to select)
    c.EVAL_EACH_EPOCH = True


# ---------------------------------------------------------------------------- the rules (pure functions)
def ema_decay(step, init, final, warmup_iters):
    """MUST's ramp: ``init + (final - init) * min(1, step / warmup_iters)``."""
    ramp = 1.0 if warmup_iters <= 0 else min(1.0, step / warmup_iters)
    return init + (final - init) * ramp


@torch.no_grad()
def ema_update_(teacher, student, decay):
    """In place, per tensor: ``teacher = decay * teacher + (1 - decay) * student``."""
    for t, s in zip(teacher, student):
        t.mul_(decay).add_(s.detach().to(t.dtype), alpha=1.0 - decay)


def confident_pseudo_labels(teacher_probs, threshold):
    """``(pseudo [B], mask [B])``: the teacher's argmax, and whether its probability exceeds ``threshold``."""
    conf, pseudo = teacher_probs.max(dim=1)
    return pseudo, conf > threshold


def masked_cross_entropy(logits, targets, mask):
    """Mean CE over the masked samples; 0 (not NaN) when none is (MUST would divide by zero)."""
    ce = F.cross_entropy(logits, targets, reduction="none")
    maskf = mask.to(ce.dtype)
    return (ce * maskf).sum() / maskf.sum().clamp_min(1.0)


def balance_term(probs, form, marginal=None):
    """MUST's fairness term on the mean prediction: ``batch`` (over the global batch) or ``running`` (the
    running mean, whose loss MUST divides by the batch part's weight 0.5 from the first step of the epoch
    on, the first step included)."""
    mean_probs = global_batch_mean(probs)
    if form == "running":
        mean_probs, _ = marginal.update(mean_probs)
        return log_marginal_loss(mean_probs) / (1.0 - marginal.momentum)
    return log_marginal_loss(mean_probs)


def visual_layer_id(name, num_layers):
    """Layer index for layer-wise lr decay: 0 = embeddings/ln_pre, i + 1 = block i, L + 1 = the rest."""
    tail = name.split("visual.", 1)[1] if "visual." in name else ""
    if tail.startswith(("conv1", "class_embedding", "positional_embedding", "ln_pre")):
        return 0
    if tail.startswith("transformer.resblocks."):
        return int(tail.split(".")[2]) + 1
    return num_layers + 1


def param_groups(named_params, lr, weight_decay, no_decay, layer_decay=1.0, num_layers=0):
    """Optimizer groups of the trainable parameters: lr scaled per layer, weight decay off where
    ``no_decay(name, param)``."""
    groups = {}
    for name, p in named_params:
        if not p.requires_grad:
            continue
        scale = layer_decay ** (num_layers + 1 - visual_layer_id(name, num_layers)) if layer_decay != 1.0 else 1.0
        wd = 0.0 if no_decay(name, p) else weight_decay
        groups.setdefault((scale, wd), {"params": [], "lr": lr * scale, "weight_decay": wd})["params"].append(p)
    return list(groups.values())


# ---------------------------------------------------------------------------- model
class VisualClassifier(TrainableState):
    """CLIP whose visual LayerNorms train, plus a class-embedding classifier initialised from text."""

    per_class_dims = {"classifier": 0}

    def __init__(self, clip_model, class_emb, logit_scale=100.0, normalize_classifier=True):
        super().__init__()
        self.clip = clip_model
        unfreeze_visual_layernorms(clip_model)
        self.classifier = nn.Parameter(class_emb.detach().clone().float())  # [K, D]
        self.logit_scale = logit_scale
        self.normalize_classifier = normalize_classifier

    def features(self, images):
        return F.normalize(self.clip.encode_image(images).float(), dim=-1)

    def class_weights(self):
        return F.normalize(self.classifier, dim=-1) if self.normalize_classifier else self.classifier

    def forward(self, images):
        return self.logit_scale * self.features(images) @ self.class_weights().t()


class EmaTeacher(nn.Module):
    """The teacher's copy of the trainable tensors (buffers, so they are checkpointed but not trained)."""

    def __init__(self, named_params):
        super().__init__()
        for name, p in named_params:
            self.register_buffer(name.replace(".", "__"), p.detach().clone())

    def tensors(self):
        return {name.replace("__", "."): b for name, b in self.named_buffers()}


class MustModel(VisualClassifier):
    extra_state_keys = ("teacher.",)
    per_class_dims = {"classifier": 0, "teacher.classifier": 0}

    def __init__(self, *args, tune="layernorm", **kwargs):
        super().__init__(*args, **kwargs)
        if tune == "visual":  # the authors' MUST: every weight of the image tower trains
            for p in self.clip.visual.parameters():
                p.requires_grad_(True)
        self.teacher = EmaTeacher([(n, p) for n, p in self.named_parameters() if p.requires_grad])

    def student_tensors(self):
        return [p for n, p in self.named_parameters() if p.requires_grad]

    def ema_step(self, decay):
        teacher = self.teacher.tensors()
        student = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        ema_update_([teacher[n] for n, _ in student], [p for _, p in student], decay)

    def teacher_logits(self, images):
        return functional_call(self, self.teacher.tensors(), (images,))


# ---------------------------------------------------------------------------- trainer
@TRAINER_REGISTRY.register()
class MUST(ClipTrainer):
    CFG_NODE = "MUST"
    SUPPORTS_DDP = True  # gradients synced via _distributed.wrap_model, balance term over the global batch

    def check_cfg(self, cfg):
        c = cfg.TRAINER.MUST
        self.check_choices(cfg, {"PREC": ("fp32", "bf16"), "BALANCE": ("auto", "batch", "running", "none"),
                                 "TUNE": ("layernorm", "visual")})
        if not 0.0 <= c.CONF_THRESHOLD < 1.0:
            raise UserError("TRAINER.MUST.CONF_THRESHOLD={} must be in [0, 1)".format(c.CONF_THRESHOLD))
        if not (0.0 <= c.EMA_DECAY_INIT <= 1.0 and 0.0 <= c.EMA_DECAY <= 1.0):
            raise UserError("TRAINER.MUST.EMA_DECAY_INIT={} and EMA_DECAY={} must be in [0, 1]".format(
                c.EMA_DECAY_INIT, c.EMA_DECAY))

    def custom_train_transform(self):
        c = self.cfg.TRAINER.MUST
        strong = strong_transform(self.cfg, c.STRONG_SCALE, c.RANDAUGMENT_M, c.RANDAUGMENT_N)
        return [weak_transform(self.cfg), strong]  # batch keys img (teacher), img2 (student)

    def gpu_train_views(self):
        """The views of ``custom_train_transform`` for the GPU path (keys img, img2)."""
        c = self.cfg.TRAINER.MUST
        return [weak_view(), strong_view(c.STRONG_SCALE, c.RANDAUGMENT_M, c.RANDAUGMENT_N)]

    def build_method(self):
        c = self.cfg.TRAINER.MUST
        model = MustModel(self.clip_model, self.template_classifier(), c.LOGIT_SCALE, c.NORMALIZE_CLASSIFIER,
                          tune=c.TUNE)
        self.model = model.to(self.device)
        num_layers = getattr(getattr(self.clip_model.visual, "transformer", None), "layers", 0)
        groups = param_groups(self.model.named_parameters(), self.cfg.OPTIM.LR, self.cfg.OPTIM.WEIGHT_DECAY,
                              no_decay=lambda name, p: p.dim() == 1,  # MUST: no decay on biases and gains
                              layer_decay=c.LAYER_DECAY if num_layers else 1.0, num_layers=num_layers)
        self.optim = build_optimizer(groups, self.cfg.OPTIM)
        total_steps = max(1, self.cfg.OPTIM.MAX_EPOCH * len(self.train_loader_x))
        # MUST's cosine_scheduler: each group's lr (scaled by layer decay) and floor scale together
        self.sched = iteration_cosine(self.optim, self.cfg.OPTIM.LR, c.MIN_LR, total_steps)
        self.register_model("must", self.model, self.optim, self.sched)
        self.train_model = _distributed.wrap_model(self.model, self.device)  # DDP under torchrun
        self.balance_form = c.BALANCE if c.BALANCE != "auto" else ("running" if self.num_classes >= 512 else "batch")
        self.marginal = RunningMarginal(0.5)
        n_train = sum(p.numel() for p in self.model.student_tensors())
        print("MUST: {} trainable parameters ({} + classifier {}); balance term: {}".format(
            n_train, "visual LayerNorms" if c.TUNE == "layernorm" else "image tower",
            tuple(self.model.classifier.shape), self.balance_form))

    def text_sources(self):
        return {"templates": str(self.cfg.DATASET.TEMPLATES)}

    # ------------------------------------------------------------------ training
    def before_epoch(self):
        self.marginal.reset()
        zero = torch.zeros((), device=self.device)
        self._epoch_stats = {"n": 0, "n_confident": zero.clone(), "pl_correct": zero.clone(),
                             "lr": self.get_current_lr()}

    def forward_backward(self, batch):
        c = self.cfg.TRAINER.MUST
        weak = batch["img"].to(self.device, non_blocking=True)
        strong = batch["img2"].to(self.device, non_blocking=True)
        step = self.epoch * self.num_batches + self.batch_idx
        with torch.no_grad(), self.autocast():
            teacher_probs = torch.softmax(self.model.teacher_logits(weak).float(), dim=1)
        pseudo, mask = confident_pseudo_labels(teacher_probs, c.CONF_THRESHOLD)
        with self.autocast():
            logits = self.train_model(strong).float()
        loss_st = masked_cross_entropy(logits, pseudo, mask)
        loss_bal = torch.zeros((), device=logits.device)
        if self.balance_form != "none":
            loss_bal = balance_term(torch.softmax(logits, dim=1), self.balance_form, self.marginal)
        loss = loss_st + c.BALANCE_WEIGHT * loss_bal
        self.model_backward_and_update(loss)
        self.sched.step()  # per-iteration cosine
        decay = ema_decay(step, c.EMA_DECAY_INIT, c.EMA_DECAY, c.EMA_WARMUP_ITERS)
        self.model.ema_step(decay)

        stats = self._epoch_stats  # on the device, read once per epoch; the label is a diagnostic only
        stats["n"] += pseudo.numel()
        stats["n_confident"] += mask.sum()
        stats["pl_correct"] += ((pseudo == batch["label"].to(self.device)) & mask).sum()
        stats["ema_decay"] = decay
        return {"loss": loss.detach(), "loss_st": loss_st.detach(), "loss_bal": loss_bal.detach()}

    def after_epoch(self):
        stats = self._epoch_stats
        n_conf = stats["n_confident"].item()
        record = {
            "conf_ratio": n_conf / max(stats["n"], 1),
            "diag_pseudo_label_acc": 100.0 * stats["pl_correct"].item() / max(n_conf, 1),  # confident samples
            "ema_decay": float(stats.get("ema_decay", 0.0)),
            "lr": stats["lr"],
        }
        self.log_epoch(record)
        super().after_epoch()

    # ------------------------------------------------------------------ inference
    def model_inference(self, images):
        with self.autocast():
            if self.cfg.TRAINER.MUST.TEST_TEACHER:
                return self.model.teacher_logits(images).float()
            return self.model(images).float()
