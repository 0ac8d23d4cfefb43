"""FAIR: Fine-grained Alignment and Interaction Refinement (a reconstruction: docs/fair.md).

Self-training of CLIP on unlabelled target images. Per training image:

1. views: weak, strong (RandomResizedCrop + flip + RandAugment) and N local square crops;
2. fixed score (no grad, WCA-style): crops weighted by their agreement with the whole image,
   composite feature scored against similarity-weighted description prototypes ``W_fix``;
3. Class Description Anchors ``A``: learnable (``LEARN_ANCHORS``), initialised from the mean description
   embedding (one per class; or one per description, ``TRAINER.FAIR.ANCHORS description``);
4. Learned Alignment Score: the top-k crops re-weighted, scored against the current anchors;
5. pseudo-label ``argmax(gamma * S_fix + (1 - gamma) * LAS)`` (no grad); gamma follows
   ``GAMMA_SCHEDULE`` (constant, linear towards ``GAMMA_END``, or LAS only after a warm-up);
6. ambiguity weight per sample (``agreement`` of the two heads by default);
7. loss: weighted CE of the strong view against the anchors + lambda * class-balance term, plus
   ``LAS_LOSS_WEIGHT`` * weighted CE of the self-trained LAS: strong versions of the top-k crops chosen
   in step 4 go through the image tower with gradient, and their relevance-weighted composite is scored
   against the anchors, so the anchors and the LayerNorms also learn from local evidence.
Trained: the visual LayerNorms and the anchors. Inference: the anchors on the centre view (plus LAS
from test-time crops with ``TRAINER.FAIR.TEST_LAS``). Every reconstructed choice is a key below.
Train-split labels are read only for the diagnostic accuracies (``diag_*``).

Which crops carry the gradient (``LAS_CROP_VIEW``): strong versions of the top-k crops that LAS selected
on the weak pass: each re-cut at a random sub-square and flipped, on the device. The selection and the
relevance weights come from the no-grad pass (crops of the strong view would need their own selection
pass: N more forwards), and only those k crops per image are re-encoded with gradient. Re-encoding the
selected crops unchanged (``weak``) gives the pseudo-label back to the crops it was computed from: their
CE is near zero (measured on the synthetic world: 0.05 against 8 for the strong view), so the term would
teach almost nothing; the re-cut makes it a weak-to-strong consistency term, as the strong global view is.

Speed (docs/speed.md): the views can be made on the GPU (``gpu_train_views``); the no-grad views go
through one batched forward; the grad-carrying forward (strong view, plus the selected crops when
``LAS_LOSS_WEIGHT`` > 0) is one call of ``FairModel.forward`` (wrapped in DDP under torchrun, so the
gradients of both terms are synced); the class-balance term is over the global batch and the CE terms
are per-sample means (equal local batches: their DDP average is the global-batch mean). The schedule's
gamma is a function of the epoch and iteration only (no state to checkpoint).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from fairclip.toolbox import TRAINER_REGISTRY, build_optimizer
from fairclip.toolbox.errors import UserError

from ._alignment import (
    crop_relevance, crop_weights, description_prototypes, description_weights, mean_description_embedding,
    top_crops, weighted_composite,
)
from . import _distributed
from ._clip_base import ClipTrainer, TrainableState, unfreeze_visual_layernorms
from ._gpu_views import center_view, local_crops, strong_view, weak_view
from ._losses import RunningMarginal, class_balance_loss, global_batch_mean, weighted_cross_entropy
from ._views import LocalCrops, strong_transform, weak_transform


def add_config(cfg):
    c = cfg.TRAINER.FAIR = CN()
    c.PREC = "fp32"  # fp32 or bf16 (autocast over fp32 master weights; never fp16 weights with AdamW)
    # Views
    c.N_CROPS = 8  # local crops per image
    c.CROP_MIN_FRAC = 0.5  # crop side ~ U(MIN, MAX) * min(H, W)
    c.CROP_MAX_FRAC = 0.9
    c.STRONG_SCALE = (0.3, 1.0)  # RandomResizedCrop scale of the strong view
    c.RANDAUGMENT_N = 2
    c.RANDAUGMENT_M = 9
    # Fixed score (reconstructed: WCA-style crop weights, microCLIP's linear description weights)
    c.CROP_TAU = math.exp(4)  # crop weights softmax(tau * <c_n, g>); WCA uses e^4, 0 = uniform
    c.DESC_WEIGHTING = "linear"  # description weights for W_fix: linear | softmax | mean
    # Class Description Anchors and LAS (reconstructed)
    c.ANCHORS = "class"  # class: one anchor per class | description: one per description
    c.LEARN_ANCHORS = True  # False: the anchors stay at their initialisation (only the LayerNorms train)
    c.TOP_K = 4  # crops kept for LAS (by relevance to the whole image)
    # Pseudo-labels and weights (reconstructed)
    c.GAMMA = 0.5  # fused = gamma * S_fix + (1 - gamma) * LAS (the start value of a schedule)
    # gamma over training: constant (GAMMA throughout) | linear (GAMMA for GAMMA_WARMUP_EPOCHS, then per
    # iteration linearly to GAMMA_END at the last step) | las (GAMMA for the warm-up, then 0: LAS only)
    c.GAMMA_SCHEDULE = "constant"
    c.GAMMA_END = 0.0
    c.GAMMA_WARMUP_EPOCHS = 1
    c.WEIGHTING = "agreement"  # agreement | margin | entropy | none
    c.LOGIT_SCALE = 100.0  # scale of cosine scores in every softmax / cross-entropy
    # Loss
    c.BALANCE = "batch"  # class-balance term on the mean strong-view prediction: batch | running | none
    c.BALANCE_WEIGHT = 1.0  # lambda
    # Self-trained LAS: weight of the weighted CE of the top-k crop composite (re-encoded with gradient)
    # against the anchors; 0 = LAS is only computed, never trained from crops (> 0 costs k grad forwards
    # per image, about 1.8x the step). Off by default: on the synthetic world it did not help (docs/fair.md)
    c.LAS_LOSS_WEIGHT = 0.0
    # Which images of the selected crops carry that gradient: strong = each selected crop re-cut at a random
    # square of LAS_CROP_SCALE of its area (uniform position) and flipped with p 1/2, on the device;
    # weak = the selected crops exactly as scored (their CE is near 0: the pseudo-label came from them).
    # (0.8, 1): on the synthetic world a deeper re-cut, (0.5, 1), cost 1.4 points (docs/fair.md)
    c.LAS_CROP_VIEW = "strong"
    c.LAS_CROP_SCALE = (0.8, 1.0)
    c.MIN_LR = 2e-6  # per-iteration cosine from OPTIM.LR down to MIN_LR (no warm-up)
    # Inference
    c.TEST_LAS = False  # also score test-time crops with LAS (costs N_CROPS forwards per image)
    c.TEST_LAS_WEIGHT = 0.5
    # Diagnostics: evaluate the test split after every epoch for the history (never used to select)
    c.EVAL_EACH_EPOCH = True
    # A label recorded in results.json (protocol.variant); scripts/fair/ablate.sh sets it per variant
    c.VARIANT = ""


# ---------------------------------------------------------------------------- the parts (pure functions)
def fixed_score(global_feats, crop_feats, w_fix, tau):
    """``S_fix [B, K]``: the relevance-weighted crop composite against the fixed prototypes."""
    weights = crop_weights(crop_relevance(crop_feats, global_feats), tau)
    return weighted_composite(crop_feats, weights) @ w_fix.t()


def learned_alignment(global_feats, crop_feats, class_vectors, top_k, tau):
    """``(LAS [B, K], index [B, k], crop weights [B, k])``: the top-k crops by relevance, re-weighted,
    against the current class vectors, with the positions and weights of the crops it chose."""
    picked, relevance, index = top_crops(crop_feats, crop_relevance(crop_feats, global_feats), top_k)
    weights = crop_weights(relevance, tau)
    return weighted_composite(picked, weights) @ class_vectors.t(), index, weights


def learned_alignment_score(global_feats, crop_feats, class_vectors, top_k, tau):
    """``LAS [B, K]``: the top-k crops by relevance, re-weighted, against the current class vectors."""
    return learned_alignment(global_feats, crop_feats, class_vectors, top_k, tau)[0]


def fuse_scores(s_fix, las, gamma):
    return gamma * s_fix + (1.0 - gamma) * las


GAMMA_SCHEDULES = ("constant", "linear", "las")


def jitter_crops(images, scale):
    """The strong version of local crops ``[M, C, H, W]``: each re-cut at a random square box covering
    U(``scale``) of its area (uniform position inside it), flipped horizontally with probability 1/2, and
    resampled back to ``H x W`` (bilinear; the images may be normalised, resampling is linear). Random
    numbers are drawn on the images' device (no host sync)."""
    m, device = images.shape[0], images.device
    lo, hi = float(scale[0]), float(scale[1])
    side = (lo + (hi - lo) * torch.rand(m, device=device)).sqrt()  # fraction of the crop's side
    shift_x = (2 * torch.rand(m, device=device) - 1) * (1 - side)  # box centre in [-1, 1] coordinates
    shift_y = (2 * torch.rand(m, device=device) - 1) * (1 - side)
    flip = torch.where(torch.rand(m, device=device) < 0.5, -1.0, 1.0)
    theta = torch.zeros(m, 2, 3, device=device, dtype=images.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = side * flip, shift_x
    theta[:, 1, 1], theta[:, 1, 2] = side, shift_y
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def gamma_at(schedule, gamma, gamma_end, warmup_epochs, epoch, batch_idx, num_batches, max_epoch):
    """The fusion weight of the fixed score at step ``batch_idx`` of epoch ``epoch`` (both from 0).

    constant: ``gamma``. las: ``gamma`` for the first ``warmup_epochs`` epochs, then 0 (LAS only).
    linear: ``gamma`` for the warm-up, then linear per iteration from ``gamma`` (first step after the
    warm-up) to ``gamma_end`` (last step of training). A pure function of the position in training, so a
    resumed run continues the same curve.
    """
    if schedule == "constant" or epoch < warmup_epochs:
        return float(gamma)
    if schedule == "las":
        return 0.0
    if schedule != "linear":
        raise UserError("TRAINER.FAIR.GAMMA_SCHEDULE={!r} is not one of {}".format(schedule, ", ".join(GAMMA_SCHEDULES)))
    steps = max(1, (max_epoch - warmup_epochs) * num_batches - 1)
    done = (epoch - warmup_epochs) * num_batches + batch_idx
    return float(gamma + (gamma_end - gamma) * min(1.0, done / steps))


def ambiguity_weights(s_fix, las, fused, pseudo, rule, scale=100.0):
    """Per-sample weights in [0, 1] (no grad) that shrink where classes are confused.

    agreement: prod over the fixed and LAS heads of p(y_hat) / max p (1 when both heads pick y_hat);
    margin: 1 - p2 / p1 of the fused prediction; entropy: 1 - H(p) / log K; none: all ones.
    """
    if rule == "none":
        return torch.ones_like(pseudo, dtype=fused.dtype)
    if rule == "agreement":
        w = torch.ones_like(pseudo, dtype=fused.dtype)
        for scores in (s_fix, las):
            p = torch.softmax(scale * scores, dim=1)
            w = w * p.gather(1, pseudo[:, None]).squeeze(1) / p.max(dim=1).values
        return w
    p = torch.softmax(scale * fused, dim=1)
    if rule == "margin":
        top2 = p.topk(2, dim=1).values
        return 1.0 - top2[:, 1] / top2[:, 0]
    if rule == "entropy":
        entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(1)
        return 1.0 - entropy / math.log(p.shape[1])
    raise UserError("TRAINER.FAIR.WEIGHTING={!r} is not one of agreement, margin, entropy, none".format(rule))


class FairModel(TrainableState):
    """CLIP (visual LayerNorms trainable) + Class Description Anchors. Checkpoints hold only those."""

    per_class_dims = {"anchors": 0}

    def select_classes(self, state_dict, index):
        out = super().select_classes(state_dict, index)
        anchors = out.get("anchors")
        if anchors is not None and anchors.dim() == 3 and anchors.shape[1] > self.anchors.shape[1]:
            # one anchor per description: the kept classes may have fewer descriptions than the longest
            # trained class; slots past this model's longest list were padding for every kept class
            # (same DATASET.DESCRIPTIONS file as in training)
            out["anchors"] = anchors[:, :self.anchors.shape[1]]
        return out

    def __init__(self, clip_model, anchors, desc_mask=None, class_emb=None, bf16=False):
        super().__init__()
        self.clip = clip_model
        self.anchors = nn.Parameter(anchors.clone())  # [K, D] or [K, M, D]
        self.register_buffer("desc_mask", desc_mask, persistent=False)
        self.register_buffer("class_emb", class_emb, persistent=False)
        self.bf16 = bf16  # autocast the image tower in bf16 (fp32 master weights)

    def forward(self, images):
        """The differentiable part of a step (what DDP wraps): L2-normalised image features (fp32) and
        the class vectors."""
        with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            feats = self.clip.encode_image(images)
        return F.normalize(feats.float(), dim=-1), self.class_vectors()

    def class_vectors(self):
        """One L2-normalised vector per class ``[K, D]`` (the classifier of LAS, training and inference)."""
        if self.anchors.dim() == 2:
            return F.normalize(self.anchors, dim=-1)
        anchors = F.normalize(self.anchors, dim=-1)
        weights = description_weights(anchors, self.desc_mask, self.class_emb, "linear")
        return description_prototypes(anchors, self.desc_mask, weights)


@TRAINER_REGISTRY.register()
class FAIR(ClipTrainer):
    CFG_NODE = "FAIR"
    SUPPORTS_DDP = True  # gradients synced via _distributed.wrap_model, balance term over the global batch

    def check_cfg(self, cfg):
        c = cfg.TRAINER.FAIR
        self.check_choices(cfg, {
            "PREC": ("fp32", "bf16"), "ANCHORS": ("class", "description"),
            "WEIGHTING": ("agreement", "margin", "entropy", "none"), "BALANCE": ("batch", "running", "none"),
            "DESC_WEIGHTING": ("linear", "softmax", "mean"), "GAMMA_SCHEDULE": GAMMA_SCHEDULES,
            "LAS_CROP_VIEW": ("strong", "weak")})
        lo, hi = c.LAS_CROP_SCALE
        if not 0.0 < lo <= hi <= 1.0:
            raise UserError("TRAINER.FAIR.LAS_CROP_SCALE={} must be (low, high) with 0 < low <= high <= 1 (area "
                            "fractions of a crop)".format(tuple(c.LAS_CROP_SCALE)))
        if not 1 <= c.TOP_K <= c.N_CROPS:
            raise UserError("TRAINER.FAIR.TOP_K={} must be between 1 and TRAINER.FAIR.N_CROPS={}".format(
                c.TOP_K, c.N_CROPS))
        for key in ("GAMMA", "GAMMA_END"):
            if not 0.0 <= c[key] <= 1.0:
                raise UserError("TRAINER.FAIR.{}={} must be in [0, 1]".format(key, c[key]))
        if c.LAS_LOSS_WEIGHT < 0:
            raise UserError("TRAINER.FAIR.LAS_LOSS_WEIGHT={} must be >= 0 (0 turns the crop loss off)".format(
                c.LAS_LOSS_WEIGHT))
        if c.GAMMA_WARMUP_EPOCHS < 0:
            raise UserError("TRAINER.FAIR.GAMMA_WARMUP_EPOCHS={} must be >= 0".format(c.GAMMA_WARMUP_EPOCHS))
        if c.GAMMA_SCHEDULE != "constant" and c.GAMMA_WARMUP_EPOCHS >= cfg.OPTIM.MAX_EPOCH:
            print("Warning: TRAINER.FAIR.GAMMA_WARMUP_EPOCHS={} covers all {} epochs: GAMMA_SCHEDULE {} never "
                  "leaves GAMMA={}".format(c.GAMMA_WARMUP_EPOCHS, cfg.OPTIM.MAX_EPOCH, c.GAMMA_SCHEDULE, c.GAMMA))
        if not 0.0 < c.CROP_MIN_FRAC <= c.CROP_MAX_FRAC <= 1.0:
            raise UserError("TRAINER.FAIR.CROP_MIN_FRAC={} and CROP_MAX_FRAC={} must satisfy 0 < MIN <= MAX <= 1 "
                            "(fractions of the image's shorter side)".format(c.CROP_MIN_FRAC, c.CROP_MAX_FRAC))

    # ------------------------------------------------------------------ data
    def local_crops(self):
        c = self.cfg.TRAINER.FAIR
        return LocalCrops(self.cfg, n=c.N_CROPS, min_frac=c.CROP_MIN_FRAC, max_frac=c.CROP_MAX_FRAC)

    def custom_train_transform(self):
        c = self.cfg.TRAINER.FAIR
        strong = strong_transform(self.cfg, c.STRONG_SCALE, c.RANDAUGMENT_M, c.RANDAUGMENT_N)
        return [weak_transform(self.cfg), strong, self.local_crops()]  # batch keys img, img2, img3

    def custom_test_transform(self):
        if not self.cfg.TRAINER.FAIR.TEST_LAS:
            return None
        from fairclip.toolbox import build_transform

        return [build_transform(self.cfg, is_train=False), self.local_crops()]

    def gpu_train_views(self):
        """The views of ``custom_train_transform`` for the GPU path (keys img, img2, img3)."""
        c = self.cfg.TRAINER.FAIR
        return [weak_view(), strong_view(c.STRONG_SCALE, c.RANDAUGMENT_M, c.RANDAUGMENT_N),
                local_crops(c.N_CROPS, c.CROP_MIN_FRAC, c.CROP_MAX_FRAC)]

    def gpu_test_views(self):
        c = self.cfg.TRAINER.FAIR
        if c.TEST_LAS:
            return [center_view(), local_crops(c.N_CROPS, c.CROP_MIN_FRAC, c.CROP_MAX_FRAC)]
        return [center_view()]

    # ------------------------------------------------------------------ model
    def build_method(self):
        c = self.cfg.TRAINER.FAIR
        desc_emb, desc_mask = self.description_bank()
        class_emb = self.template_classifier()
        # Fixed prototypes: similarity-weighted description means (frozen for the whole run).
        self.w_fix = description_prototypes(
            desc_emb, desc_mask, description_weights(desc_emb, desc_mask, class_emb, c.DESC_WEIGHTING))
        if c.ANCHORS == "class":
            anchors = mean_description_embedding(desc_emb, desc_mask)
            model = FairModel(self.clip_model, anchors)
        else:
            model = FairModel(self.clip_model, desc_emb, desc_mask, class_emb)
        unfreeze_visual_layernorms(self.clip_model)
        model.anchors.requires_grad_(bool(c.LEARN_ANCHORS))  # frozen: not trained, not in checkpoints
        model.bf16 = self.prec == "bf16"
        self.model = model.to(self.device)
        self.train_model = _distributed.wrap_model(self.model, self.device)  # DDP under torchrun
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optim = build_optimizer(params, self.cfg.OPTIM)
        total_steps = max(1, self.cfg.OPTIM.MAX_EPOCH * len(self.train_loader_x))
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.optim, T_max=total_steps, eta_min=c.MIN_LR)
        self.register_model("fair", self.model, self.optim, self.sched)
        self.balance = RunningMarginal(0.5)
        n_train = sum(p.numel() for p in params)
        print("FAIR: {} trainable parameters (visual LayerNorms + {} anchors {}{}); gamma {} {}; LAS loss "
              "weight {}".format(n_train, c.ANCHORS, tuple(self.model.anchors.shape),
                                 "" if c.LEARN_ANCHORS else ", frozen", c.GAMMA_SCHEDULE, c.GAMMA, c.LAS_LOSS_WEIGHT))

    def text_sources(self):
        c = self.cfg.TRAINER.FAIR
        return {"descriptions": self.descriptions_path(), "templates": str(self.cfg.DATASET.TEMPLATES),
                "fixed_description_weighting": c.DESC_WEIGHTING, "anchors": c.ANCHORS}

    # ------------------------------------------------------------------ training
    def current_gamma(self):
        """gamma of the current step (``GAMMA_SCHEDULE``), from the epoch and iteration alone."""
        c = self.cfg.TRAINER.FAIR
        return gamma_at(c.GAMMA_SCHEDULE, c.GAMMA, c.GAMMA_END, c.GAMMA_WARMUP_EPOCHS, self.epoch,
                        getattr(self, "batch_idx", 0), max(1, getattr(self, "num_batches", 1)),
                        self.cfg.OPTIM.MAX_EPOCH)

    def pseudo_labels(self, weak, crops):
        """No-grad part of a step: ``(pseudo [B], weights [B], s_fix, las)`` from one batched forward.

        Also keeps the LAS crop selection of this step (``self._las_pick``: the positions of the top-k
        crops and their relevance weights) for the self-trained LAS term."""
        c = self.cfg.TRAINER.FAIR
        b, n = crops.shape[:2]
        with torch.no_grad():
            feats = self.encode_images(torch.cat([weak, crops.flatten(0, 1)]))
            global_feats, crop_feats = feats[:b], feats[b:].view(b, n, -1)
            s_fix = fixed_score(global_feats, crop_feats, self.w_fix, c.CROP_TAU)
            las, index, crop_w = learned_alignment(global_feats, crop_feats, self.model.class_vectors(), c.TOP_K,
                                                   c.CROP_TAU)
            fused = fuse_scores(s_fix, las, self.current_gamma())
            pseudo = fused.argmax(dim=1)
            weights = ambiguity_weights(s_fix, las, fused, pseudo, c.WEIGHTING, c.LOGIT_SCALE)
        self._las_pick = (index, crop_w)
        return pseudo, weights, s_fix, las

    def fair_loss(self, strong_feats, pseudo, weights, class_vectors=None):
        """Weighted CE of the strong view against the anchors + lambda * class balance."""
        c = self.cfg.TRAINER.FAIR
        if class_vectors is None:
            class_vectors = self.model.class_vectors()
        logits = c.LOGIT_SCALE * strong_feats @ class_vectors.t()
        loss_st = weighted_cross_entropy(logits, pseudo, weights)
        loss_bal = torch.zeros((), device=logits.device)
        if c.BALANCE != "none":
            mean_probs = global_batch_mean(torch.softmax(logits, dim=1))
            if c.BALANCE == "running":
                mean_probs, scale = self.balance.update(mean_probs)
                loss_bal = scale * class_balance_loss(mean_probs)
            else:
                loss_bal = class_balance_loss(mean_probs)
        return loss_st + c.BALANCE_WEIGHT * loss_bal, loss_st, loss_bal

    def las_loss(self, crop_feats, crop_w, pseudo, weights, class_vectors):
        """The self-trained LAS term: weighted CE of the relevance-weighted composite of the selected crops
        (``crop_feats [B, k, D]`` with gradient, ``crop_w [B, k]`` from the no-grad selection) against the
        class vectors."""
        logits = self.cfg.TRAINER.FAIR.LOGIT_SCALE * weighted_composite(crop_feats, crop_w) @ class_vectors.t()
        return weighted_cross_entropy(logits, pseudo, weights)

    @staticmethod
    def gather_crops(crops, index):
        """The crop images at ``index [B, k]`` of ``crops [B, N, C, H, W]``: ``[B, k, C, H, W]``."""
        rows = torch.arange(crops.shape[0], device=crops.device).unsqueeze(1)
        return crops[rows, index]

    def forward_backward(self, batch):
        c = self.cfg.TRAINER.FAIR
        weak = batch["img"].to(self.device, non_blocking=True)
        strong = batch["img2"].to(self.device, non_blocking=True)
        crops = batch["img3"].to(self.device, non_blocking=True)
        pseudo, weights, s_fix, las = self.pseudo_labels(weak, crops)
        b = strong.shape[0]
        if c.LAS_LOSS_WEIGHT > 0:
            # One grad-carrying forward (through DDP when distributed): the strong view and the selected crops.
            index, crop_w = self._las_pick
            picked = self.gather_crops(crops, index).flatten(0, 1)
            if c.LAS_CROP_VIEW == "strong":
                picked = jitter_crops(picked, c.LAS_CROP_SCALE)
            feats, class_vectors = self.train_model(torch.cat([strong, picked]))
            strong_feats = feats[:b]
            loss_las = self.las_loss(feats[b:].view(b, index.shape[1], -1), crop_w, pseudo, weights, class_vectors)
        else:
            strong_feats, class_vectors = self.train_model(strong)
            loss_las = torch.zeros((), device=strong_feats.device)
        loss, loss_st, loss_bal = self.fair_loss(strong_feats, pseudo, weights, class_vectors)
        loss = loss + c.LAS_LOSS_WEIGHT * loss_las
        self.model_backward_and_update(loss)
        self.sched.step()  # per-iteration cosine (stepped here, not by update_lr at the epoch end)

        # Epoch statistics kept on the device (read once per epoch). The label is a diagnostic only.
        stats = self._epoch_stats
        label = batch["label"].to(self.device)
        stats["n"] += pseudo.numel()
        stats["weight_sum"] += weights.sum()
        stats["disagree"] += (s_fix.argmax(1) != las.argmax(1)).sum()
        stats["pl_correct"] += (pseudo == label).sum()
        stats["fix_correct"] += (s_fix.argmax(1) == label).sum()
        stats["las_correct"] += (las.argmax(1) == label).sum()
        stats["gamma_sum"] += self.current_gamma()
        stats["steps"] += 1
        return {"loss": loss.detach(), "loss_st": loss_st.detach(), "loss_bal": loss_bal.detach(),
                "loss_las": loss_las.detach(), "w_mean": weights.mean()}

    def before_epoch(self):
        self.balance.reset()
        zero = torch.zeros((), device=self.device)
        self._epoch_stats = {"n": 0, "steps": 0, "gamma_sum": 0.0, "weight_sum": zero.clone(),
                             "disagree": zero.clone(), "pl_correct": zero.clone(), "fix_correct": zero.clone(),
                             "las_correct": zero.clone()}

    def after_epoch(self):
        stats = self._epoch_stats
        n = max(stats["n"], 1)
        record = {
            "mean_weight": stats["weight_sum"].item() / n,
            "heads_disagree_frac": stats["disagree"].item() / n,
            "gamma": stats["gamma_sum"] / max(stats["steps"], 1),  # mean over the epoch's steps
            "diag_pseudo_label_acc": 100.0 * stats["pl_correct"].item() / n,  # diagnostic: uses train labels
            "diag_fixed_head_acc": 100.0 * stats["fix_correct"].item() / n,  # diagnostic
            "diag_las_head_acc": 100.0 * stats["las_correct"].item() / n,  # diagnostic
            "lr": self.get_current_lr(),
        }
        self.log_epoch(record)
        super().after_epoch()

    # ------------------------------------------------------------------ inference
    def parse_batch_test(self, batch):
        images = batch["img"]
        if isinstance(images, (list, tuple)):  # never: K_TRANSFORMS is 1 at test time
            images = images[0]
        self._test_crops = batch.get("img2")
        return images.to(self.device), batch["label"].to(self.device)

    def model_inference(self, images):
        c = self.cfg.TRAINER.FAIR
        class_vectors = self.model.class_vectors()
        feats = self.encode_images(images)
        scores = feats @ class_vectors.t()
        if c.TEST_LAS and self._test_crops is not None:
            crops = self._test_crops.to(self.device)
            b, n = crops.shape[:2]
            crop_feats = self.encode_images(crops.flatten(0, 1)).view(b, n, -1)
            las = learned_alignment_score(feats, crop_feats, class_vectors, c.TOP_K, c.CROP_TAU)
            scores = (1.0 - c.TEST_LAS_WEIGHT) * scores + c.TEST_LAS_WEIGHT * las
        return c.LOGIT_SCALE * scores
