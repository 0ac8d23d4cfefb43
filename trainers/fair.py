"""FAIR: Fine-grained Alignment and Interaction Refinement (reconstruction; docs/fair.md).

Self-training of CLIP on unlabelled target images. Per training image:

1. views: weak, strong (RandomResizedCrop + flip + RandAugment) and N local square crops;
2. fixed score (no grad, WCA-style): crops weighted by their agreement with the whole image,
   composite feature scored against similarity-weighted description prototypes ``W_fix``;
3. Class Description Anchors ``A``: learnable, initialised from the mean description embedding
   (one per class; or one per description, ``TRAINER.FAIR.ANCHORS description``);
4. Learned Alignment Score: the top-k crops re-weighted, scored against the current anchors;
5. pseudo-label ``argmax(gamma * S_fix + (1 - gamma) * LAS)`` (no grad);
6. ambiguity weight per sample (``agreement`` of the two heads by default);
7. loss on the strong view: weighted CE against the anchors + lambda * class-balance term.
Trained: the visual LayerNorms and the anchors. Inference: the anchors on the centre view (plus LAS
from test-time crops with ``TRAINER.FAIR.TEST_LAS``). Every reconstructed choice is a key below.
Train-split labels are read only for the diagnostic pseudo-label accuracy.

Speed (docs/speed.md): the views can be made on the GPU (``gpu_train_views``); the no-grad views go
through one batched forward; the strong view's forward runs through ``FairModel.forward`` (wrapped in
DDP under torchrun, the class-balance term over the global batch).
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
    select_top_crops, weighted_composite,
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
    c.TOP_K = 4  # crops kept for LAS (by relevance to the whole image)
    # Pseudo-labels and weights (reconstructed)
    c.GAMMA = 0.5  # fused = gamma * S_fix + (1 - gamma) * LAS
    c.WEIGHTING = "agreement"  # agreement | margin | entropy | none
    c.LOGIT_SCALE = 100.0  # scale of cosine scores in every softmax / cross-entropy
    # Loss
    c.BALANCE = "batch"  # class-balance term on the mean strong-view prediction: batch | running | none
    c.BALANCE_WEIGHT = 1.0  # lambda
    c.MIN_LR = 2e-6  # per-iteration cosine from OPTIM.LR down to MIN_LR (no warm-up)
    # Inference
    c.TEST_LAS = False  # also score test-time crops with LAS (costs N_CROPS forwards per image)
    c.TEST_LAS_WEIGHT = 0.5
    # Diagnostics: evaluate the test split after every epoch for the history (never used to select)
    c.EVAL_EACH_EPOCH = True


# ---------------------------------------------------------------------------- the parts (pure functions)
def fixed_score(global_feats, crop_feats, w_fix, tau):
    """``S_fix [B, K]``: the relevance-weighted crop composite against the fixed prototypes."""
    weights = crop_weights(crop_relevance(crop_feats, global_feats), tau)
    return weighted_composite(crop_feats, weights) @ w_fix.t()


def learned_alignment_score(global_feats, crop_feats, class_vectors, top_k, tau):
    """``LAS [B, K]``: the top-k crops by relevance, re-weighted, against the current class vectors."""
    picked, relevance = select_top_crops(crop_feats, crop_relevance(crop_feats, global_feats), top_k)
    return weighted_composite(picked, crop_weights(relevance, tau)) @ class_vectors.t()


def fuse_scores(s_fix, las, gamma):
    return gamma * s_fix + (1.0 - gamma) * las


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
            "DESC_WEIGHTING": ("linear", "softmax", "mean")})
        if not 1 <= c.TOP_K <= c.N_CROPS:
            raise UserError("TRAINER.FAIR.TOP_K={} must be between 1 and TRAINER.FAIR.N_CROPS={}".format(
                c.TOP_K, c.N_CROPS))
        if not 0.0 <= c.GAMMA <= 1.0:
            raise UserError("TRAINER.FAIR.GAMMA={} must be in [0, 1]".format(c.GAMMA))
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
        print("FAIR: {} trainable parameters (visual LayerNorms + {} anchors {})".format(
            n_train, c.ANCHORS, tuple(self.model.anchors.shape)))

    def text_sources(self):
        c = self.cfg.TRAINER.FAIR
        return {"descriptions": self.descriptions_path(), "templates": str(self.cfg.DATASET.TEMPLATES),
                "fixed_description_weighting": c.DESC_WEIGHTING, "anchors": c.ANCHORS}

    # ------------------------------------------------------------------ training
    def pseudo_labels(self, weak, crops):
        """No-grad part of a step: ``(pseudo [B], weights [B], s_fix, las)`` from one batched forward."""
        c = self.cfg.TRAINER.FAIR
        b, n = crops.shape[:2]
        with torch.no_grad():
            feats = self.encode_images(torch.cat([weak, crops.flatten(0, 1)]))
            global_feats, crop_feats = feats[:b], feats[b:].view(b, n, -1)
            s_fix = fixed_score(global_feats, crop_feats, self.w_fix, c.CROP_TAU)
            las = learned_alignment_score(global_feats, crop_feats, self.model.class_vectors(), c.TOP_K, c.CROP_TAU)
            fused = fuse_scores(s_fix, las, c.GAMMA)
            pseudo = fused.argmax(dim=1)
            weights = ambiguity_weights(s_fix, las, fused, pseudo, c.WEIGHTING, c.LOGIT_SCALE)
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

    def forward_backward(self, batch):
        weak = batch["img"].to(self.device, non_blocking=True)
        strong = batch["img2"].to(self.device, non_blocking=True)
        crops = batch["img3"].to(self.device, non_blocking=True)
        pseudo, weights, s_fix, las = self.pseudo_labels(weak, crops)
        strong_feats, class_vectors = self.train_model(strong)
        loss, loss_st, loss_bal = self.fair_loss(strong_feats, pseudo, weights, class_vectors)
        self.model_backward_and_update(loss)
        self.sched.step()  # per-iteration cosine (stepped here, not by update_lr at the epoch end)

        # Epoch statistics kept on the device (read once per epoch). The label is a diagnostic only.
        stats = self._epoch_stats
        stats["n"] += pseudo.numel()
        stats["weight_sum"] += weights.sum()
        stats["disagree"] += (s_fix.argmax(1) != las.argmax(1)).sum()
        stats["pl_correct"] += (pseudo == batch["label"].to(self.device)).sum()
        return {"loss": loss.detach(), "loss_st": loss_st.detach(), "loss_bal": loss_bal.detach(),
                "w_mean": weights.mean()}

    def before_epoch(self):
        self.balance.reset()
        zero = torch.zeros((), device=self.device)
        self._epoch_stats = {"n": 0, "weight_sum": zero.clone(), "disagree": zero.clone(), "pl_correct": zero.clone()}

    def after_epoch(self):
        stats = self._epoch_stats
        n = max(stats["n"], 1)
        record = {
            "mean_weight": stats["weight_sum"].item() / n,
            "heads_disagree_frac": stats["disagree"].item() / n,
            "diag_pseudo_label_acc": 100.0 * stats["pl_correct"].item() / n,  # diagnostic: uses train labels
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
