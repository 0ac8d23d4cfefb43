"""LaFTer (Mirza et al., NeurIPS 2023): label-free tuning from a text-only classifier.

Two phases, both without image labels:

1. **Text classifier.** A linear layer ``W`` (``[K, D]``, no bias) learns to classify CLIP *text* embeddings:
   every class's descriptions (``DATASET.DESCRIPTIONS``: ours by default, any CuPL-format file) plus the
   dataset's prompt templates filled with the class name (``DATASET.TEMPLATES``), each embedded on its own
   and L2-normalised. ``TEXT_STEPS`` full-batch AdamW steps (lr ``TEXT_LR``, weight decay
   ``TEXT_WEIGHT_DECAY``), Gaussian noise of std ``TEXT_NOISE_STD`` added to the embeddings at every step,
   label-smoothed cross-entropy (``LABEL_SMOOTHING``). Because image and text share CLIP's embedding
   space, ``W`` already classifies images. ``TEXT_SOURCE``: ``lafter`` (descriptions + templates),
   ``templates`` or ``classnames`` (LaFTer's ablations).
2. **Self-training of the image side.** A frozen copy of ``W`` (the teacher) labels the weak view (the
   test view: resize + centre crop) from the normalised features of the *current* image encoder without
   prompts; the student sees the strong view (SimCLR-style: RandomResizedCrop ``STRONG_SCALE``, flip,
   colour jitter ``COLOR_JITTER`` with probability ``COLOR_JITTER_P``, grayscale ``GRAYSCALE_P``, Gaussian
   blur of radius U(``BLUR_SIGMA``)) through the encoder with ``N_PROMPTS`` learned visual prompt tokens
   (inserted after the class token, behind ``ln_pre``), and its *unnormalised* feature goes through the
   trained copy of ``W``. Loss: label-smoothed CE to the teacher's argmax. Trained: the visual prompts, the
   visual LayerNorms (BatchNorm affine parameters on a ResNet, where no prompts exist) and ``W``; AdamW
   ``OPTIM.LR``, weight decay ``OPTIM.WEIGHT_DECAY`` except on biases, constant lr (LaFTer's scheduler
   has no milestones).

Inference: the student (prompted encoder + ``W``) on the centre view; the last epoch is reported (LaFTer
prints the best epoch on the test set, which selects on test data). Views: the strong view has no GPU
implementation, so training views are made on the CPU (``DATALOADER.GPU_VIEWS`` still moves the test
views to the GPU). DDP: every loss term is a per-sample mean, so DDP's gradient average is the global
batch's; the text classifier is trained identically on every rank (its noise has its own seeded
generator). Train-split labels are read only for the diagnostic pseudo-label accuracy.
"""
import math
import random

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import ImageFilter
from yacs.config import CfgNode as CN

from fairclip.clip_backbone import encode_texts
from fairclip.clip_backbone.loading import visual_architecture
from fairclip.clip_backbone.text import fill_template
from fairclip.toolbox import INTERPOLATION_MODES, TRAINER_REGISTRY, build_transform
from fairclip.toolbox.errors import UserError

from . import _distributed
from ._clip_base import ClipTrainer, TrainableState, unfreeze_visual_norms, visual_norms_description

TEXT_SOURCES = ("lafter", "templates", "classnames")


def add_config(cfg):
    c = cfg.TRAINER.LAFTER = CN()
    c.PREC = "fp32"  # fp32 or bf16 (autocast over fp32 master weights)
    # Phase 1: the text classifier
    c.TEXT_SOURCE = "lafter"  # lafter (descriptions + templates) | templates | classnames
    c.TEXT_STEPS = 400  # full-batch steps; LaFTer: 400-600 per dataset (per_dataset/*.yaml)
    c.TEXT_LR = 0.0005  # LaFTer passes one --lr (5e-4) to both phases
    c.TEXT_WEIGHT_DECAY = 0.01
    c.TEXT_NOISE_STD = 0.1  # Gaussian noise on the text embeddings at every step
    c.LABEL_SMOOTHING = 0.1  # both phases
    # Phase 2: self-training
    c.N_PROMPTS = 50  # visual prompt tokens (0: none; must be 0 on a ResNet backbone)
    c.STRONG_SCALE = (0.2, 1.0)  # RandomResizedCrop area range of the student's view
    c.COLOR_JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    c.COLOR_JITTER_P = 0.8
    c.GRAYSCALE_P = 0.2
    c.BLUR_SIGMA = (0.1, 2.0)  # PIL GaussianBlur radius ~ U(lo, hi), applied to every strong view
    # Diagnostics: evaluate the test split after every epoch for the history (never used to select)
    c.EVAL_EACH_EPOCH = True


# ---------------------------------------------------------------------------- the rules (pure functions)
def text_training_set(classnames, descriptions, templates, source="lafter"):
    """``(texts, labels)`` the text classifier learns from, in LaFTer's order: every class's descriptions,
    then every class's filled templates (``lafter``); or only the templates, or only the class names."""
    if source not in TEXT_SOURCES:
        raise ValueError("unknown text source {!r}".format(source))
    texts, labels = [], []
    if source == "classnames":
        return [fill_template("{}", c) for c in classnames], list(range(len(classnames)))
    if source == "lafter":
        for k, sentences in enumerate(descriptions):
            texts += list(sentences)
            labels += [k] * len(sentences)
    for k, name in enumerate(classnames):
        for template in templates:
            texts.append(fill_template(template, name))
            labels.append(k)
    return texts, labels


def text_classifier_loss(classifier, feats, labels, noise, smoothing):
    """Label-smoothed CE of ``classifier(feats + noise)`` (one full-batch step of phase 1)."""
    return F.cross_entropy(classifier(feats + noise), labels, label_smoothing=smoothing)


def train_text_classifier(classifier, feats, labels, steps, lr, weight_decay, noise_std, smoothing, generator):
    """Phase 1: ``steps`` full-batch AdamW steps on noisy text embeddings (in place). The noise is drawn
    on the CPU from ``generator`` (the same numbers on every device and rank). Returns the losses."""
    optim = torch.optim.AdamW([{"params": [classifier.weight], "weight_decay": weight_decay}], lr=lr,
                              betas=(0.9, 0.999))
    losses = []
    for _ in range(steps):
        noise = torch.randn(feats.shape, generator=generator).to(feats.device) * noise_std
        loss = text_classifier_loss(classifier, feats, labels, noise, smoothing)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.detach())
    return torch.stack(losses) if losses else torch.zeros(0)


def prompt_init_bound(width, patch=16):
    """Uniform init bound of the visual prompts, ``sqrt(6 / (3 * patch^2 + width))`` (VPT's Xavier rule;
    LaFTer's code uses patch 16 for every backbone)."""
    return math.sqrt(6.0 / float(3 * patch * patch + width))


def prompted_image_features(visual, images, prompts=None):
    """CLIP ViT image features (projected, not normalised) with ``prompts`` ``[1, P, width]`` inserted
    after the class token of the ``ln_pre`` output (no positional embedding, no ``ln_pre`` on them)."""
    x = visual.conv1(images.to(visual.conv1.weight.dtype))
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    x = visual.ln_pre(x)
    if prompts is not None and prompts.shape[1] > 0:
        x = torch.cat([x[:, :1], prompts.to(x.dtype).expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
    x = visual.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    x = visual.ln_post(x[:, 0, :])
    return x @ visual.proj if visual.proj is not None else x


class RandomGaussianBlur:
    """PIL Gaussian blur with a radius drawn uniformly from ``sigma`` (SimCLR's blur as LaFTer uses it)."""

    def __init__(self, sigma=(0.1, 2.0)):
        self.sigma = tuple(sigma)

    def __call__(self, img):
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))

    def __repr__(self):
        return "RandomGaussianBlur(sigma={})".format(self.sigma)


def simclr_strong_transform(cfg, scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, gray_p=0.2,
                            blur=(0.1, 2.0)):
    """LaFTer's student view: RandomResizedCrop (bilinear, as its code) + flip + colour jitter + grayscale
    + Gaussian blur, then CLIP's normalisation."""
    size = tuple(cfg.INPUT.SIZE)
    return T.Compose([
        T.RandomResizedCrop(size, scale=tuple(scale), interpolation=INTERPOLATION_MODES["bilinear"]),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(*jitter)], p=jitter_p),
        T.RandomGrayscale(p=gray_p),
        RandomGaussianBlur(blur),
        T.ToTensor(),
        T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD),
    ])


# ---------------------------------------------------------------------------- model
class LafterModel(TrainableState):
    """CLIP (visual norms trained) + visual prompts + the classifier ``W``; the teacher's frozen copy of
    ``W`` is a buffer, so checkpoints keep it."""

    extra_state_keys = ("teacher_weight",)

    def __init__(self, clip_model, num_classes, n_prompts):
        super().__init__()
        self.clip = clip_model
        unfreeze_visual_norms(clip_model)
        visual = clip_model.visual
        dim = clip_model.text_projection.shape[1]
        if n_prompts > 0:
            width = visual.conv1.out_channels
            bound = prompt_init_bound(width)
            self.prompts = nn.Parameter(torch.empty(1, n_prompts, width).uniform_(-bound, bound))
        else:
            self.prompts = None
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        self.register_buffer("teacher_weight", self.classifier.weight.detach().clone())

    def student_features(self, images):
        if self.prompts is None:
            return self.clip.encode_image(images).float()
        return prompted_image_features(self.clip.visual, images, self.prompts).float()

    def forward(self, images):
        """The student's logits: unnormalised (prompted) features through ``W``."""
        return self.classifier(self.student_features(images))

    @torch.no_grad()
    def teacher_logits(self, images):
        """The frozen text classifier on the normalised features of the current encoder, no prompts."""
        feats = F.normalize(self.clip.encode_image(images).float(), dim=-1)
        return feats @ self.teacher_weight.t()

    def freeze_teacher(self):
        """The teacher becomes a copy of ``W`` as it is now (after phase 1)."""
        self.teacher_weight.copy_(self.classifier.weight.detach())


# ---------------------------------------------------------------------------- trainer
@TRAINER_REGISTRY.register()
class LaFTer(ClipTrainer):
    CFG_NODE = "LAFTER"
    SUPPORTS_DDP = True  # per-sample losses only; gradients synced through _distributed.wrap_model

    def check_cfg(self, cfg):
        c = cfg.TRAINER.LAFTER
        self.check_choices(cfg, {"PREC": ("fp32", "bf16"), "TEXT_SOURCE": TEXT_SOURCES})
        for key in ("N_PROMPTS", "TEXT_STEPS"):
            if c[key] < 0:
                raise UserError("TRAINER.LAFTER.{}={} must be >= 0".format(key, c[key]))
        for key in ("COLOR_JITTER_P", "GRAYSCALE_P", "LABEL_SMOOTHING"):
            if not 0.0 <= c[key] <= 1.0:
                raise UserError("TRAINER.LAFTER.{}={} must be in [0, 1]".format(key, c[key]))
        if len(c.COLOR_JITTER) != 4 or len(c.BLUR_SIGMA) != 2 or not 0 < c.BLUR_SIGMA[0] <= c.BLUR_SIGMA[1]:
            raise UserError("TRAINER.LAFTER.COLOR_JITTER needs 4 values (brightness, contrast, saturation, hue) "
                            "and BLUR_SIGMA two radii 0 < lo <= hi; got {} and {}".format(c.COLOR_JITTER, c.BLUR_SIGMA))

    def custom_train_transform(self):
        c = self.cfg.TRAINER.LAFTER
        strong = simclr_strong_transform(self.cfg, c.STRONG_SCALE, c.COLOR_JITTER, c.COLOR_JITTER_P, c.GRAYSCALE_P,
                                         c.BLUR_SIGMA)
        return [build_transform(self.cfg, is_train=False), strong]  # batch keys img (teacher), img2 (student)

    def gpu_train_views(self):
        return None  # the SimCLR-style strong view exists on the CPU path only

    # ------------------------------------------------------------------ model
    def build_method(self):
        c = self.cfg.TRAINER.LAFTER
        if c.N_PROMPTS > 0 and visual_architecture(self.clip_model) != "vit":
            raise UserError("TRAINER.LAFTER.N_PROMPTS={}: visual prompts need a ViT backbone; set it to 0 for a "
                            "ResNet (its BatchNorm affine parameters are tuned instead)".format(c.N_PROMPTS))
        self.model = LafterModel(self.clip_model, self.num_classes, c.N_PROMPTS).to(self.device)
        texts, labels = text_training_set(self.classnames, self._descriptions_for_text(), self.templates(),
                                          c.TEXT_SOURCE)
        self.text_feats = encode_texts(self.clip_model, texts, self.clip_info["fingerprint"],
                                       self.text_cache_dir).to(self.device)
        self.text_labels = torch.tensor(labels, dtype=torch.long, device=self.device)
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (no_decay if "bias" in name else decay).append(p)  # LaFTer: no decay on biases only
        groups = [{"params": decay, "weight_decay": self.cfg.OPTIM.WEIGHT_DECAY},
                  {"params": no_decay, "weight_decay": 0.0}]
        self.optim = torch.optim.AdamW(groups, lr=self.cfg.OPTIM.LR, betas=(0.9, 0.999))
        self.register_model("lafter", self.model, self.optim, None)  # constant lr
        self.train_model = _distributed.wrap_model(self.model, self.device)
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        print("LaFTer: {} trainable parameters ({} visual prompts, {}, classifier {}); text classifier from {} "
              "texts ({})".format(n_train, c.N_PROMPTS, visual_norms_description(self.clip_model),
                                  tuple(self.model.classifier.weight.shape), len(texts), c.TEXT_SOURCE))

    def _descriptions_for_text(self):
        return self.descriptions() if self.cfg.TRAINER.LAFTER.TEXT_SOURCE == "lafter" else []

    def text_sources(self):
        c = self.cfg.TRAINER.LAFTER
        sources = {"templates": str(self.cfg.DATASET.TEMPLATES),
                   "text_classifier": "{} ({} steps)".format(c.TEXT_SOURCE, c.TEXT_STEPS)}
        if c.TEXT_SOURCE == "lafter":
            sources["descriptions"] = self.descriptions_path()
        return sources

    # ------------------------------------------------------------------ phase 1
    def train_text_phase(self):
        """Train ``W`` on the text embeddings, then freeze its copy as the teacher; returns the last loss."""
        c = self.cfg.TRAINER.LAFTER
        generator = torch.Generator().manual_seed(max(int(self.cfg.SEED), 0))
        losses = train_text_classifier(self.model.classifier, self.text_feats, self.text_labels, c.TEXT_STEPS,
                                       c.TEXT_LR, c.TEXT_WEIGHT_DECAY, c.TEXT_NOISE_STD, c.LABEL_SMOOTHING,
                                       generator)
        self.model.freeze_teacher()
        with torch.no_grad():
            acc = (self.model.classifier(self.text_feats).argmax(1) == self.text_labels).float().mean().item()
        last = losses[-1].item() if len(losses) else float("nan")
        print("LaFTer text classifier: {} steps on {} texts, last loss {:.4f}, accuracy on its texts {:.1f}%".format(
            c.TEXT_STEPS, len(self.text_labels), last, 100.0 * acc))
        return last

    def before_train(self):
        super().before_train()  # resume: restores W, the teacher, prompts and norms
        if self.start_epoch == 0:
            self.train_text_phase()

    # ------------------------------------------------------------------ phase 2
    def before_epoch(self):
        zero = torch.zeros((), device=self.device)
        self._epoch_stats = {"n": 0, "loss_sum": zero.clone(), "pl_correct": zero.clone(),
                             "lr": self.get_current_lr()}

    def forward_backward(self, batch):
        c = self.cfg.TRAINER.LAFTER
        weak = batch["img"].to(self.device, non_blocking=True)
        strong = batch["img2"].to(self.device, non_blocking=True)
        with torch.no_grad(), self.autocast():
            pseudo = self.model.teacher_logits(weak).float().argmax(dim=1)
        with self.autocast():
            logits = self.train_model(strong).float()
        loss = F.cross_entropy(logits, pseudo, label_smoothing=c.LABEL_SMOOTHING)
        self.model_backward_and_update(loss)

        stats = self._epoch_stats  # on the device, read once per epoch; the label is a diagnostic only
        stats["n"] += pseudo.numel()
        stats["loss_sum"] += loss.detach()
        stats["pl_correct"] += (pseudo == batch["label"].to(self.device)).sum()
        return {"loss": loss.detach()}

    def after_epoch(self):
        stats = self._epoch_stats
        record = {
            "loss": stats["loss_sum"].item() / max(self.num_batches, 1),
            "diag_pseudo_label_acc": 100.0 * stats["pl_correct"].item() / max(stats["n"], 1),  # uses train labels
            "lr": stats["lr"],
        }
        self.log_epoch(record)
        super().after_epoch()

    # ------------------------------------------------------------------ inference
    def model_inference(self, images):
        with self.autocast():
            return self.model(images).float()
