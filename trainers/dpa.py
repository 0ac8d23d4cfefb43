"""DPA (Ali et al., WACV 2025): dual prototypes and alignment, LayerNorm-only on CLIP ViT-B/32.

Two classifiers score the weak view: the text prototypes ``Z`` (template embeddings, trained) and the
image prototypes ``P`` (per-class means of the weak features grouped by pseudo-label, recomputed after
every epoch; before training, from zero-shot labels). Per batch:

* pseudo-label ``argmax[a * softmax(s f P^T) + (1 - a) * DA(softmax(s f Z^T))]``, where DA divides by the
  mean text prediction over the last ``DA_HISTORY`` batches and renormalises;
* weight = product over the two heads of ``p(y_hat) / max p`` (the text head before DA, as DPA);
* loss = weighted CE of the strong view against ``Z`` + ``reg`` * class balance (batch mean)
  + ``align`` * CE(``w`` * P Z^T, identity), which pulls each text prototype towards its image prototype.
Trained: the visual LayerNorms and ``Z``. Inference: ``argmax <f(centre view), Z>``.
The memory bank is kept as per-class feature sums over the epoch (the class means DPA computes from its
bank of every sample's latest weak feature), so no per-sample index is needed.
Train-split labels are read only for the diagnostic pseudo-label accuracy.
"""
import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from fairclip.datasets.common import SkipUnreadableWrapper
from fairclip.toolbox import TRAINER_REGISTRY, build_data_loader, build_optimizer
from fairclip.toolbox.errors import UserError

from ._clip_base import ClipTrainer
from ._losses import global_batch_mean, log_marginal_loss, weighted_cross_entropy
from ._gpu_views import strong_view, weak_view
from ._views import strong_transform, weak_transform
from .must import VisualClassifier, param_groups


def add_config(cfg):
    c = cfg.TRAINER.DPA = CN()
    c.PREC = "fp32"  # fp32 or bf16 (autocast over fp32 master weights)
    c.STRONG_SCALE = (0.3, 1.0)  # DPA: RandomResizedCrop(0.3, 1) + RandAugment m9 (timm) + flip
    c.RANDAUGMENT_N = 2
    c.RANDAUGMENT_M = 9
    c.ALPHA = 0.5  # DPA's "a": weight of the image-prototype head in the pseudo-label (per dataset)
    c.DA_HISTORY = 32  # batches in the running mean prediction of distribution alignment
    c.WEIGHTING = "agreement"  # agreement (DPA) | none (the ablation without weights)
    c.BALANCE_WEIGHT = 1.0  # DPA's "reg" (0.2 on SUN397)
    c.ALIGN_WEIGHT = 1.0  # DPA's "align" (0.01 on EuroSAT)
    c.ALIGN_SCALE = 100.0  # DPA's "w": logit scale of the prototype-alignment CE (1 on Flowers, EuroSAT)
    c.LOGIT_SCALE = 100.0
    c.MIN_LR = 2e-6  # per-iteration cosine from OPTIM.LR down to MIN_LR, no warm-up (DPA: 2 x 1e-6)
    # Diagnostics: evaluate the test split after every epoch for the history (never used to select)
    c.EVAL_EACH_EPOCH = True


# ---------------------------------------------------------------------------- the rules (pure functions)
def history_mean(history, count):
    """Mean of the filled rows of the ring buffer ``history`` [H, K] after ``count`` pushes (no host sync)."""
    filled = (torch.arange(history.shape[0], device=history.device) < count).to(history.dtype)
    return (history * filled[:, None]).sum(0) / filled.sum().clamp_min(1.0)


def push_history_(history, count, batch_mean):
    """Write ``batch_mean`` over the oldest row of the ring buffer and count it (in place)."""
    history.index_copy_(0, (count % history.shape[0]).view(1), batch_mean[None].to(history.dtype))
    count.add_(1)


def distribution_alignment(probs, mean_probs, eps=1e-12):
    """``p / pbar``, renormalised per row: lifts classes the model has been under-predicting."""
    aligned = probs / mean_probs.clamp_min(eps)
    return aligned / aligned.sum(dim=1, keepdim=True)


def dpa_pseudo_labels(probs_text, probs_image, mean_text, alpha):
    """``(pseudo [B], mixed probs [B, K])`` from the image head and the aligned text head."""
    mixed = alpha * probs_image + (1.0 - alpha) * distribution_alignment(probs_text, mean_text)
    return mixed.argmax(dim=1), mixed


def agreement_weights(prob_heads, pseudo, eps=1e-7):
    """Product over the heads of ``p(y_hat) / max p``: 1 when every head's top class is ``y_hat``."""
    w = torch.ones(pseudo.shape[0], device=pseudo.device)
    for p in prob_heads:
        w = w * p.gather(1, pseudo[:, None]).squeeze(1) / (p.max(dim=1).values + eps)
    return w


def class_mean_prototypes(feat_sums, counts, fallback):
    """``normalize(sum_k / n_k)`` per class; a class no sample was assigned to keeps ``fallback[k]``."""
    means = feat_sums / counts.clamp_min(1.0)[:, None]
    return F.normalize(torch.where(counts[:, None] > 0, means, fallback), dim=-1)


def alignment_loss(image_protos, text_protos, scale):
    """``CE(scale * P Z^T, identity)``: each class's image prototype should pick its own text prototype."""
    logits = scale * image_protos @ text_protos.t()
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))


# ---------------------------------------------------------------------------- model
class DpaModel(VisualClassifier):
    """Visual LayerNorms + text prototypes (trained) and the image prototypes / DA history (buffers)."""

    extra_state_keys = ("image_prototypes", "da_history", "da_count")
    per_class_dims = {"classifier": 0, "image_prototypes": 0, "da_history": 1}

    def __init__(self, clip_model, class_emb, logit_scale, history):
        super().__init__(clip_model, class_emb, logit_scale, normalize_classifier=True)
        self.register_buffer("image_prototypes", F.normalize(class_emb.detach().clone().float(), dim=-1))
        self.register_buffer("da_history", torch.zeros(history, class_emb.shape[0]))
        self.register_buffer("da_count", torch.zeros((), dtype=torch.long))


# ---------------------------------------------------------------------------- trainer
@TRAINER_REGISTRY.register()
class DPA(ClipTrainer):
    CFG_NODE = "DPA"

    def check_cfg(self, cfg):
        c = cfg.TRAINER.DPA
        self.check_choices(cfg, {"PREC": ("fp32", "bf16"), "WEIGHTING": ("agreement", "none")})
        if not 0.0 <= c.ALPHA <= 1.0:
            raise UserError("TRAINER.DPA.ALPHA={} must be in [0, 1]".format(c.ALPHA))
        if c.DA_HISTORY < 1:
            raise UserError("TRAINER.DPA.DA_HISTORY={} must be at least 1".format(c.DA_HISTORY))

    def custom_train_transform(self):
        c = self.cfg.TRAINER.DPA
        strong = strong_transform(self.cfg, c.STRONG_SCALE, c.RANDAUGMENT_M, c.RANDAUGMENT_N)
        return [weak_transform(self.cfg), strong]  # batch keys img (weak), img2 (strong)

    def gpu_train_views(self):
        """The views of ``custom_train_transform`` for the GPU path (keys img, img2)."""
        c = self.cfg.TRAINER.DPA
        return [weak_view(), strong_view(c.STRONG_SCALE, c.RANDAUGMENT_M, c.RANDAUGMENT_N)]

    def build_method(self):
        c = self.cfg.TRAINER.DPA
        model = DpaModel(self.clip_model, self.template_classifier(), c.LOGIT_SCALE, c.DA_HISTORY)
        self.model = model.to(self.device)
        groups = param_groups(self.model.named_parameters(), self.cfg.OPTIM.LR, self.cfg.OPTIM.WEIGHT_DECAY,
                              no_decay=lambda name, p: "bias" in name)  # DPA's no-decay filter matches biases only
        self.optim = build_optimizer(groups, self.cfg.OPTIM)
        total_steps = max(1, self.cfg.OPTIM.MAX_EPOCH * len(self.train_loader_x))
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.optim, T_max=total_steps, eta_min=c.MIN_LR)
        self.register_model("dpa", self.model, self.optim, self.sched)
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        print("DPA: {} trainable parameters (visual LayerNorms + text prototypes {})".format(
            n_train, tuple(self.model.classifier.shape)))

    def text_sources(self):
        return {"templates": str(self.cfg.DATASET.TEMPLATES)}

    # ------------------------------------------------------------------ image prototypes
    @torch.no_grad()
    def initial_image_prototypes(self, batches=None):
        """Class means of the weak train features under zero-shot (text-head) labels, as DPA's first bank.
        ``batches``: an iterable of {"img", "label"} dicts instead of the train split's weak views (the
        parity script feeds fixed views)."""
        cfg = self.cfg
        loader = batches
        if loader is None:
            loader = build_data_loader(
                cfg, sampler_type="SequentialSampler", data_source=self.dm.dataset.train_x,
                batch_size=cfg.DATALOADER.TEST.BATCH_SIZE, tfm=weak_transform(cfg), is_train=False,
                dataset_wrapper=SkipUnreadableWrapper)
        self.set_model_mode("eval")
        sums, counts, correct = self._zero_bank()
        text = self.model.class_weights()
        for batch in loader:
            with self.autocast():
                feats = self.model.features(batch["img"].to(self.device))
            pseudo = (feats @ text.t()).argmax(dim=1)
            self._bank_add(sums, counts, feats, pseudo)
            correct += (pseudo == batch["label"].to(self.device)).sum()  # diagnostic only
        self.model.image_prototypes.copy_(class_mean_prototypes(sums, counts, text))
        return 100.0 * correct.item() / max(counts.sum().item(), 1.0)

    def _zero_bank(self):
        k, d = self.model.classifier.shape
        return (torch.zeros(k, d, device=self.device), torch.zeros(k, device=self.device),
                torch.zeros((), device=self.device))

    @staticmethod
    def _bank_add(sums, counts, feats, labels):
        sums.index_add_(0, labels, feats.float())
        counts.index_add_(0, labels, torch.ones_like(labels, dtype=counts.dtype))

    def before_train(self):
        super().before_train()  # resume (restores the prototypes and DA history), writer, history
        if self.start_epoch == 0:
            acc = self.initial_image_prototypes()
            print("DPA: initial image prototypes from zero-shot labels (diagnostic accuracy {:.2f}%)".format(acc))

    # ------------------------------------------------------------------ training
    def before_epoch(self):
        sums, counts, zero = self._zero_bank()
        self._bank = (sums, counts)
        self._epoch_stats = {"n": 0, "weight_sum": zero.clone(), "pl_correct": zero.clone(),
                             "heads_disagree": zero.clone(), "lr": self.get_current_lr()}

    def pseudo_labels(self, weak):
        """No-grad part of a step: ``(pseudo, weights, weak feats, text probs, image probs)``."""
        c, m = self.cfg.TRAINER.DPA, self.model
        with torch.no_grad():
            with self.autocast():
                feats = m.features(weak)
            probs_text = torch.softmax(c.LOGIT_SCALE * feats @ m.class_weights().t(), dim=1)
            probs_image = torch.softmax(c.LOGIT_SCALE * feats @ m.image_prototypes.t(), dim=1)
            push_history_(m.da_history, m.da_count, probs_text.mean(0))  # this batch counts, as in DPA
            pseudo, _ = dpa_pseudo_labels(probs_text, probs_image, history_mean(m.da_history, m.da_count), c.ALPHA)
            if c.WEIGHTING == "agreement":
                weights = agreement_weights([probs_text, probs_image], pseudo)
            else:
                weights = torch.ones_like(pseudo, dtype=feats.dtype)
        return pseudo, weights, feats, probs_text, probs_image

    def dpa_loss(self, strong, pseudo, weights):
        c, m = self.cfg.TRAINER.DPA, self.model
        text = m.class_weights()
        with self.autocast():
            feats = m.features(strong)
        logits = c.LOGIT_SCALE * feats @ text.t()
        loss_st = weighted_cross_entropy(logits, pseudo, weights)
        loss_bal = log_marginal_loss(global_batch_mean(torch.softmax(logits, dim=1)))
        loss_align = alignment_loss(m.image_prototypes, text, c.ALIGN_SCALE)
        loss = loss_st + c.BALANCE_WEIGHT * loss_bal + c.ALIGN_WEIGHT * loss_align
        return loss, loss_st, loss_bal, loss_align

    def forward_backward(self, batch):
        weak = batch["img"].to(self.device, non_blocking=True)
        strong = batch["img2"].to(self.device, non_blocking=True)
        pseudo, weights, weak_feats, probs_text, probs_image = self.pseudo_labels(weak)
        loss, loss_st, loss_bal, loss_align = self.dpa_loss(strong, pseudo, weights)
        self.model_backward_and_update(loss)
        self.sched.step()  # per-iteration cosine
        self._bank_add(*self._bank, weak_feats, pseudo)

        stats = self._epoch_stats  # on the device, read once per epoch; the label is a diagnostic only
        stats["n"] += pseudo.numel()
        stats["weight_sum"] += weights.sum()
        stats["heads_disagree"] += (probs_text.argmax(1) != probs_image.argmax(1)).sum()
        stats["pl_correct"] += (pseudo == batch["label"].to(self.device)).sum()
        return {"loss": loss.detach(), "loss_st": loss_st.detach(), "loss_bal": loss_bal.detach(),
                "loss_align": loss_align.detach()}

    def after_epoch(self):
        # Recompute the image prototypes from this epoch's weak features and pseudo-labels (DPA's bank).
        with torch.no_grad():
            sums, counts = self._bank
            self.model.image_prototypes.copy_(class_mean_prototypes(sums, counts, self.model.class_weights()))
        stats = self._epoch_stats
        n = max(stats["n"], 1)
        record = {
            "mean_weight": stats["weight_sum"].item() / n,
            "heads_disagree_frac": stats["heads_disagree"].item() / n,
            "classes_in_bank": int((counts > 0).sum().item()),
            "diag_pseudo_label_acc": 100.0 * stats["pl_correct"].item() / n,  # diagnostic: uses train labels
            "lr": stats["lr"],
        }
        self.log_epoch(record)
        super().after_epoch()  # checkpoint, with the new prototypes

    # ------------------------------------------------------------------ inference
    def model_inference(self, images):
        with self.autocast():
            return self.model(images).float()
