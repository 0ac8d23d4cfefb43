"""Scaffold a new method: its trainer, configs and script, ready to run and to compare.

    python -m tools.new_trainer NAME [--like must|fair|zsclip] [--title TITLE] [--order N] [--force]

NAME is the trainer's class and registry name (a Python identifier, e.g. ``EntMin``); the module, the
script folder and the method name are its lower case (``entmin``), the config node is its upper case
(``TRAINER.ENTMIN``). Writes, and refuses to overwrite without ``--force``:

* ``trainers/<name>.py``: a working trainer with every hook a method of this toolbox fills, commented;
* ``configs/trainers/<NAME>/vit_b32.yaml``: the recipe on CLIP ViT-B/32;
* ``configs/trainers/<NAME>/per_dataset/synthetic.yaml``: a CPU schedule for the synthetic world;
* ``scripts/<name>/main.sh``: the method's script (``tools/methods.py`` finds it there, so
  ``scripts/compare.sh``, ``scripts/demo.sh``, ``tools.results_table``, ``tools.plots`` and
  ``tools.run_jobs`` know the method at once).

``--like`` picks the starting point: ``must`` (default; self-training: the current model's confident
pseudo-labels on a weak view train a strong view, class balance, LayerNorms + classifier trained),
``fair`` (self-training with local crops and description anchors) or ``zsclip`` (training-free).
docs/adding_a_trainer.md walks through the result.
"""
import argparse
import keyword
import os
import os.path as osp
import re
import stat
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
LIKES = ("must", "fair", "zsclip")

# ---------------------------------------------------------------------------- trainer templates
# Placeholders: __NAME__ (class / registry name), __NODE__ (config node), __FOLDER__ (module and script
# folder), __LIKE__ (the template's name).

_HEADER = '''"""__NAME__: <one paragraph: what the method does, and the paper or code it follows>.

Scaffolded by ``python -m tools.new_trainer __NAME__ --like __LIKE__``; docs/adding_a_trainer.md explains
every hook. Keys: ``TRAINER.__NODE__.*`` (``add_config`` below; an unknown key in a YAML file or on the
command line fails). Run: ``bash scripts/__FOLDER__/main.sh DATASET``; compare:
``METHODS="zsclip __FOLDER__" DATASETS=... bash scripts/compare.sh``.
__EXTRA__"""
'''

TRAINER_ZSCLIP = _HEADER.replace("__EXTRA__", '''Training-free: the script runs it with ``--eval-only`` (``# order``/``# title`` and the mode ``eval`` are in
its main.sh).
''') + '''from yacs.config import CfgNode as CN

from fairclip.toolbox import TRAINER_REGISTRY

from ._alignment import description_prototypes, description_weights
from ._clip_base import ClipTrainer


def add_config(cfg):
    """The keys of this method, added before any file is merged."""
    c = cfg.TRAINER.__NODE__ = CN()
    c.PREC = "fp32"  # fp32 or bf16 (autocast) for the image tower; ClipTrainer.autocast() reads it
    c.TEXT = "templates"  # templates | descriptions: what the class embeddings are made of


@TRAINER_REGISTRY.register()
class __NAME__(ClipTrainer):
    CFG_NODE = "__NODE__"  # cfg.TRAINER.__NODE__: precision, results.json, log_epoch
    SUPPORTS_DDP = True  # training-free: torchrun shards the evaluation over processes

    def check_cfg(self, cfg):
        """Runs before anything is built: refuse bad values in one line (``UserError``)."""
        self.check_choices(cfg, {"PREC": ("fp32", "bf16"), "TEXT": ("templates", "descriptions")})

    def build_method(self):
        """Called once CLIP (``self.clip_model``) and the class names (``self.classnames``) are there."""
        if self.cfg.TRAINER.__NODE__.TEXT == "descriptions":
            emb, mask = self.description_bank()  # [K, M, D] cached embeddings of DATASET.DESCRIPTIONS
            self.class_weights = description_prototypes(emb, mask, description_weights(emb, mask, None, "mean"))
        else:
            self.class_weights = self.template_classifier()  # [K, D] from DATASET.TEMPLATES, L2-normalised
        self.logit_scale = self.clip_model.logit_scale.exp().item()

    def text_sources(self):
        """What results.json records as the text protocol (the table's "text" column)."""
        if self.cfg.TRAINER.__NODE__.TEXT == "descriptions":
            return {"descriptions": self.descriptions_path()}
        return {"templates": str(self.cfg.DATASET.TEMPLATES)}

    def model_inference(self, images):
        """Logits ``[B, K]`` of a test batch (already preprocessed, on ``self.device``)."""
        return self.logit_scale * self.encode_images(images) @ self.class_weights.t()
'''

_SELF_TRAINING_COMMON_DOC = '''Self-training on the unlabelled train split; train-split labels are read only for the diagnostic
pseudo-label accuracy (``diag_*``), never by a loss.
'''

TRAINER_MUST = _HEADER.replace("__EXTRA__", _SELF_TRAINING_COMMON_DOC + '''Per batch: the current model labels a weak view without gradient; samples whose confidence exceeds
``CONF_THRESHOLD`` give a cross-entropy target to a strong view, plus a class-balance term. Trained: the
visual LayerNorms and a classifier initialised from the template embeddings. (trainers/must.py adds an
EMA teacher and layer-wise lr decay to the same loop.)
''') + '''import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from fairclip.toolbox import TRAINER_REGISTRY, build_optimizer
from fairclip.toolbox.errors import UserError

from . import _distributed
from ._clip_base import ClipTrainer, TrainableState, unfreeze_visual_layernorms
from ._gpu_views import strong_view, weak_view
from ._losses import class_balance_loss, global_batch_mean
from ._views import strong_transform, weak_transform


def add_config(cfg):
    """The keys of this method, added before any file is merged (an unknown key then fails)."""
    c = cfg.TRAINER.__NODE__ = CN()
    c.PREC = "fp32"  # fp32 or bf16 (autocast over fp32 master weights); ClipTrainer.autocast() reads it
    c.STRONG_SCALE = (0.3, 1.0)  # RandomResizedCrop area of the strong view
    c.RANDAUGMENT_N = 2  # RandAugment ops of the strong view (0 = off)
    c.RANDAUGMENT_M = 9
    c.CONF_THRESHOLD = 0.5  # confidence a pseudo-label needs
    c.BALANCE_WEIGHT = 1.0  # weight of the class-balance term (0 = off)
    c.LOGIT_SCALE = 100.0
    c.MIN_LR = 1e-6  # per-iteration cosine from OPTIM.LR down to MIN_LR
    c.EVAL_EACH_EPOCH = True  # test accuracy in the history after every epoch (a diagnostic, never selects)


class __NAME__Model(TrainableState):
    """What trains, as one module: checkpoints hold only its trainable tensors (CLIP's frozen weights are
    rebuilt from the backbone file), and DDP wraps it."""

    def __init__(self, clip_model, class_emb, logit_scale):
        super().__init__()
        self.clip = clip_model
        unfreeze_visual_layernorms(clip_model)  # everything else of CLIP stays frozen
        self.classifier = nn.Parameter(class_emb.detach().clone().float())  # [K, D], from the text side
        self.logit_scale = logit_scale
        self.bf16 = False

    def forward(self, images):
        with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            feats = self.clip.encode_image(images)
        return self.logit_scale * F.normalize(feats.float(), dim=-1) @ F.normalize(self.classifier, dim=-1).t()


@TRAINER_REGISTRY.register()
class __NAME__(ClipTrainer):
    CFG_NODE = "__NODE__"  # cfg.TRAINER.__NODE__: precision, results.json, log_epoch
    # True once the step is right on several processes: gradients through _distributed.wrap_model (below) and
    # batch statistics over the global batch (global_batch_mean). Else torchrun refuses to run it.
    SUPPORTS_DDP = True

    def check_cfg(self, cfg):
        """Runs before anything is built: refuse bad values in one line (``UserError``)."""
        c = cfg.TRAINER.__NODE__
        self.check_choices(cfg, {"PREC": ("fp32", "bf16")})
        if not 0.0 <= c.CONF_THRESHOLD < 1.0:
            raise UserError("TRAINER.__NODE__.CONF_THRESHOLD={} must be in [0, 1)".format(c.CONF_THRESHOLD))

    # ------------------------------------------------------------------ views
    def custom_train_transform(self):
        """The CPU/PIL views of a training image: batch keys img, img2, ... in this order."""
        c = self.cfg.TRAINER.__NODE__
        return [weak_transform(self.cfg), strong_transform(self.cfg, c.STRONG_SCALE, c.RANDAUGMENT_M, c.RANDAUGMENT_N)]

    def gpu_train_views(self):
        """The same views made on the device from the decode-once cache (DATALOADER.GPU_VIEWS): same keys.
        Return None to keep the CPU path only."""
        c = self.cfg.TRAINER.__NODE__
        return [weak_view(), strong_view(c.STRONG_SCALE, c.RANDAUGMENT_M, c.RANDAUGMENT_N)]

    # custom_test_transform / gpu_test_views: the test views (default: CLIP's centre view on both paths).

    # ------------------------------------------------------------------ model
    def build_method(self):
        """Called once CLIP (``self.clip_model``), the loaders and the class names are there: build what
        trains, its optimizer and schedule, and register them (checkpoints, resume, eval-only loading)."""
        c = self.cfg.TRAINER.__NODE__
        self.model = __NAME__Model(self.clip_model, self.template_classifier(), c.LOGIT_SCALE).to(self.device)
        self.model.bf16 = self.prec == "bf16"
        self.train_model = _distributed.wrap_model(self.model, self.device)  # DDP under torchrun, else the model
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optim = build_optimizer(params, self.cfg.OPTIM)
        total_steps = max(1, self.cfg.OPTIM.MAX_EPOCH * len(self.train_loader_x))
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.optim, T_max=total_steps, eta_min=c.MIN_LR)
        self.register_model("__FOLDER__", self.model, self.optim, self.sched)
        print("__NAME__: {} trainable parameters".format(sum(p.numel() for p in params)))

    def text_sources(self):
        """What results.json records as the text protocol (the table's "text" column)."""
        return {"templates": str(self.cfg.DATASET.TEMPLATES)}

    # ------------------------------------------------------------------ training
    def before_epoch(self):
        # Statistics stay on the device during the epoch (no host sync per step); read in after_epoch.
        zero = torch.zeros((), device=self.device)
        self._epoch_stats = {"n": 0, "n_confident": zero.clone(), "pl_correct": zero.clone()}

    def pseudo_labels(self, weak):
        """No-grad part of a step: ``(pseudo [B], mask [B])``, the model's labels and which are confident."""
        with torch.no_grad():
            probs = torch.softmax(self.model(weak).float(), dim=1)
        conf, pseudo = probs.max(dim=1)
        return pseudo, conf > self.cfg.TRAINER.__NODE__.CONF_THRESHOLD

    def loss(self, logits, pseudo, mask):
        """The method's objective on the strong view: ``(total, parts for the log)``."""
        c = self.cfg.TRAINER.__NODE__
        ce = F.cross_entropy(logits, pseudo, reduction="none")
        maskf = mask.to(ce.dtype)
        loss_st = (ce * maskf).sum() / maskf.sum().clamp_min(1.0)
        loss_bal = class_balance_loss(global_batch_mean(torch.softmax(logits, dim=1)))  # over the global batch
        return loss_st + c.BALANCE_WEIGHT * loss_bal, {"loss_st": loss_st.detach(), "loss_bal": loss_bal.detach()}

    def forward_backward(self, batch):
        """One training step on one batch: returns the losses to log (tensors; no .item() here)."""
        weak = batch["img"].to(self.device, non_blocking=True)
        strong = batch["img2"].to(self.device, non_blocking=True)
        pseudo, mask = self.pseudo_labels(weak)
        logits = self.train_model(strong).float()  # through the DDP wrapper: gradients are synced
        loss, parts = self.loss(logits, pseudo, mask)
        self.model_backward_and_update(loss)  # zero_grad, non-finite check, backward, optimizer step
        self.sched.step()  # per-iteration schedule

        stats = self._epoch_stats  # the train label is read for a diagnostic only
        stats["n"] += pseudo.numel()
        stats["n_confident"] += mask.sum()
        stats["pl_correct"] += ((pseudo == batch["label"].to(self.device)) & mask).sum()
        return dict(parts, loss=loss.detach())

    def after_epoch(self):
        stats = self._epoch_stats
        n_conf = stats["n_confident"].item()
        self.log_epoch({  # one line per epoch; kept in history.json and results.json (the curves plot)
            "conf_ratio": n_conf / max(stats["n"], 1),
            "diag_pseudo_label_acc": 100.0 * stats["pl_correct"].item() / max(n_conf, 1),
            "lr": self.get_current_lr(),
        })
        super().after_epoch()  # checkpoints (TRAIN.CHECKPOINT_FREQ), so an interrupted run resumes

    # ------------------------------------------------------------------ inference
    def model_inference(self, images):
        """Logits ``[B, K]`` of a test batch (already preprocessed, on ``self.device``)."""
        return self.model(images).float()
'''

TRAINER_FAIR = _HEADER.replace("__EXTRA__", _SELF_TRAINING_COMMON_DOC + '''Per batch: a weak view and ``N_CROPS`` local crops are embedded without gradient; the crops, weighted
by their agreement with the whole image, and the weak view are scored against learnable class anchors
(initialised at each class's mean description embedding); the fused score's argmax is the pseudo-label,
weighted by its confidence, for a cross-entropy on the strong view plus a class-balance term. Trained:
the visual LayerNorms and the anchors. (trainers/fair.py is the full method.)
''') + '''import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from fairclip.toolbox import TRAINER_REGISTRY, build_optimizer
from fairclip.toolbox.errors import UserError

from . import _distributed
from ._alignment import crop_relevance, crop_weights, mean_description_embedding, weighted_composite
from ._clip_base import ClipTrainer, TrainableState, unfreeze_visual_layernorms
from ._gpu_views import local_crops, strong_view, weak_view
from ._losses import class_balance_loss, global_batch_mean, weighted_cross_entropy
from ._views import LocalCrops, strong_transform, weak_transform


def add_config(cfg):
    """The keys of this method, added before any file is merged (an unknown key then fails)."""
    c = cfg.TRAINER.__NODE__ = CN()
    c.PREC = "fp32"  # fp32 or bf16 (autocast over fp32 master weights); ClipTrainer.autocast() reads it
    c.STRONG_SCALE = (0.3, 1.0)  # RandomResizedCrop area of the strong view
    c.RANDAUGMENT_N = 2  # RandAugment ops of the strong view (0 = off)
    c.RANDAUGMENT_M = 9
    c.N_CROPS = 4  # local crops per training image
    c.CROP_MIN_FRAC = 0.5  # crop side ~ U(MIN, MAX) x the short side
    c.CROP_MAX_FRAC = 0.9
    c.CROP_TAU = math.exp(4)  # crop weights softmax(tau * <crop, image>); 0 = uniform
    c.GAMMA = 0.5  # pseudo-label score = GAMMA * crops + (1 - GAMMA) * weak view
    c.BALANCE_WEIGHT = 1.0  # weight of the class-balance term (0 = off)
    c.LOGIT_SCALE = 100.0
    c.MIN_LR = 2e-6  # per-iteration cosine from OPTIM.LR down to MIN_LR
    c.EVAL_EACH_EPOCH = True  # test accuracy in the history after every epoch (a diagnostic, never selects)


class __NAME__Model(TrainableState):
    """What trains, as one module: checkpoints hold only its trainable tensors, and DDP wraps it."""

    def __init__(self, clip_model, anchors):
        super().__init__()
        self.clip = clip_model
        unfreeze_visual_layernorms(clip_model)  # everything else of CLIP stays frozen
        self.anchors = nn.Parameter(anchors.detach().clone().float())  # [K, D] class anchors
        self.bf16 = False

    def class_vectors(self):
        return F.normalize(self.anchors, dim=-1)

    def forward(self, images):
        """L2-normalised image features and the class vectors: the differentiable part of a step."""
        with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            feats = self.clip.encode_image(images)
        return F.normalize(feats.float(), dim=-1), self.class_vectors()


@TRAINER_REGISTRY.register()
class __NAME__(ClipTrainer):
    CFG_NODE = "__NODE__"  # cfg.TRAINER.__NODE__: precision, results.json, log_epoch
    # True once the step is right on several processes: gradients through _distributed.wrap_model (below) and
    # batch statistics over the global batch (global_batch_mean). Else torchrun refuses to run it.
    SUPPORTS_DDP = True

    def check_cfg(self, cfg):
        """Runs before anything is built: refuse bad values in one line (``UserError``)."""
        c = cfg.TRAINER.__NODE__
        self.check_choices(cfg, {"PREC": ("fp32", "bf16")})
        if c.N_CROPS < 1 or not 0.0 <= c.GAMMA <= 1.0:
            raise UserError("TRAINER.__NODE__.N_CROPS={} must be >= 1 and GAMMA={} in [0, 1]".format(c.N_CROPS, c.GAMMA))

    # ------------------------------------------------------------------ views
    def custom_train_transform(self):
        """The CPU/PIL views of a training image: batch keys img, img2, img3 in this order (the crops
        arrive as one [B, N, 3, H, W] tensor)."""
        c = self.cfg.TRAINER.__NODE__
        return [weak_transform(self.cfg), strong_transform(self.cfg, c.STRONG_SCALE, c.RANDAUGMENT_M, c.RANDAUGMENT_N),
                LocalCrops(self.cfg, n=c.N_CROPS, min_frac=c.CROP_MIN_FRAC, max_frac=c.CROP_MAX_FRAC)]

    def gpu_train_views(self):
        """The same views made on the device from the decode-once cache (DATALOADER.GPU_VIEWS): same keys.
        Return None to keep the CPU path only."""
        c = self.cfg.TRAINER.__NODE__
        return [weak_view(), strong_view(c.STRONG_SCALE, c.RANDAUGMENT_M, c.RANDAUGMENT_N),
                local_crops(c.N_CROPS, c.CROP_MIN_FRAC, c.CROP_MAX_FRAC)]

    # custom_test_transform / gpu_test_views: the test views (default: CLIP's centre view on both paths).

    # ------------------------------------------------------------------ model
    def build_method(self):
        """Called once CLIP (``self.clip_model``), the loaders and the class names are there: build what
        trains, its optimizer and schedule, and register them (checkpoints, resume, eval-only loading)."""
        c = self.cfg.TRAINER.__NODE__
        desc_emb, desc_mask = self.description_bank()  # [K, M, D] cached embeddings of DATASET.DESCRIPTIONS
        self.model = __NAME__Model(self.clip_model, mean_description_embedding(desc_emb, desc_mask)).to(self.device)
        self.model.bf16 = self.prec == "bf16"
        self.train_model = _distributed.wrap_model(self.model, self.device)  # DDP under torchrun, else the model
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optim = build_optimizer(params, self.cfg.OPTIM)
        total_steps = max(1, self.cfg.OPTIM.MAX_EPOCH * len(self.train_loader_x))
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.optim, T_max=total_steps, eta_min=c.MIN_LR)
        self.register_model("__FOLDER__", self.model, self.optim, self.sched)
        print("__NAME__: {} trainable parameters".format(sum(p.numel() for p in params)))

    def text_sources(self):
        """What results.json records as the text protocol (the table's "text" column)."""
        return {"descriptions": self.descriptions_path()}

    # ------------------------------------------------------------------ training
    def before_epoch(self):
        # Statistics stay on the device during the epoch (no host sync per step); read in after_epoch.
        zero = torch.zeros((), device=self.device)
        self._epoch_stats = {"n": 0, "weight_sum": zero.clone(), "pl_correct": zero.clone()}

    def pseudo_labels(self, weak, crops):
        """No-grad part of a step, one batched forward: ``(pseudo [B], weights [B])``."""
        c = self.cfg.TRAINER.__NODE__
        b, n = crops.shape[:2]
        with torch.no_grad():
            feats = self.encode_images(torch.cat([weak, crops.flatten(0, 1)]))  # L2-normalised, fp32
            image, crop = feats[:b], feats[b:].view(b, n, -1)
            composite = weighted_composite(crop, crop_weights(crop_relevance(crop, image), c.CROP_TAU))
            anchors = self.model.class_vectors()
            scores = c.GAMMA * composite @ anchors.t() + (1.0 - c.GAMMA) * image @ anchors.t()
            probs = torch.softmax(c.LOGIT_SCALE * scores, dim=1)
            weights, pseudo = probs.max(dim=1)  # the confidence weighs each sample's loss
        return pseudo, weights

    def loss(self, feats, class_vectors, pseudo, weights):
        """The method's objective on the strong view: ``(total, parts for the log)``."""
        c = self.cfg.TRAINER.__NODE__
        logits = c.LOGIT_SCALE * feats @ class_vectors.t()
        loss_st = weighted_cross_entropy(logits, pseudo, weights)
        loss_bal = class_balance_loss(global_batch_mean(torch.softmax(logits, dim=1)))  # over the global batch
        return loss_st + c.BALANCE_WEIGHT * loss_bal, {"loss_st": loss_st.detach(), "loss_bal": loss_bal.detach()}

    def forward_backward(self, batch):
        """One training step on one batch: returns the losses to log (tensors; no .item() here)."""
        weak = batch["img"].to(self.device, non_blocking=True)
        strong = batch["img2"].to(self.device, non_blocking=True)
        crops = batch["img3"].to(self.device, non_blocking=True)
        pseudo, weights = self.pseudo_labels(weak, crops)
        feats, class_vectors = self.train_model(strong)  # through the DDP wrapper: gradients are synced
        loss, parts = self.loss(feats, class_vectors, pseudo, weights)
        self.model_backward_and_update(loss)  # zero_grad, non-finite check, backward, optimizer step
        self.sched.step()  # per-iteration schedule

        stats = self._epoch_stats  # the train label is read for a diagnostic only
        stats["n"] += pseudo.numel()
        stats["weight_sum"] += weights.sum()
        stats["pl_correct"] += (pseudo == batch["label"].to(self.device)).sum()
        return dict(parts, loss=loss.detach())

    def after_epoch(self):
        stats = self._epoch_stats
        n = max(stats["n"], 1)
        self.log_epoch({  # one line per epoch; kept in history.json and results.json (the curves plot)
            "mean_weight": stats["weight_sum"].item() / n,
            "diag_pseudo_label_acc": 100.0 * stats["pl_correct"].item() / n,
            "lr": self.get_current_lr(),
        })
        super().after_epoch()  # checkpoints (TRAIN.CHECKPOINT_FREQ), so an interrupted run resumes

    # ------------------------------------------------------------------ inference
    def model_inference(self, images):
        """Logits ``[B, K]`` of a test batch (already preprocessed, on ``self.device``)."""
        return self.cfg.TRAINER.__NODE__.LOGIT_SCALE * self.encode_images(images) @ self.model.class_vectors().t()
'''

TRAINERS = {"zsclip": TRAINER_ZSCLIP, "must": TRAINER_MUST, "fair": TRAINER_FAIR}

# ---------------------------------------------------------------------------- configs and script
_CLIP_INPUT = '''INPUT:
  SIZE: (224, 224)
  INTERPOLATION: "bicubic"
  PIXEL_MEAN: [0.48145466, 0.4578275, 0.40821073]
  PIXEL_STD: [0.26862954, 0.26130258, 0.27577711]
  TRANSFORMS: ["random_resized_crop", "random_flip", "normalize"]
'''

CONFIG_EVAL = '''# __NAME__ on CLIP ViT-B/32, evaluation only (scaffolded by tools/new_trainer.py --like __LIKE__).
DATALOADER:
  TEST:
    BATCH_SIZE: 256
  NUM_WORKERS: 4

''' + _CLIP_INPUT + '''
MODEL:
  BACKBONE:
    NAME: "ViT-B/32"

TRAINER:
  __NODE__:
    PREC: "fp32"
'''

CONFIG_TRAIN = '''# __NAME__ on CLIP ViT-B/32 (scaffolded by tools/new_trainer.py --like __LIKE__): the shared budget of the
# self-training methods here (15 epochs, batch 64, AdamW lr 1e-4); put the method's own recipe here and say
# where each value comes from. Per-dataset values go to per_dataset/<dataset>.yaml (merged after this file).
DATALOADER:
  TRAIN_X:
    BATCH_SIZE: 64
  TEST:
    BATCH_SIZE: 256
  NUM_WORKERS: 8

''' + _CLIP_INPUT + '''
OPTIM:
  NAME: "adamw"
  LR: 0.0001
  WEIGHT_DECAY: 0.05
  MAX_EPOCH: 15
  LR_SCHEDULER: "cosine"  # the trainer steps its own per-iteration cosine to TRAINER.__NODE__.MIN_LR
  WARMUP_EPOCH: -1

TRAIN:
  CHECKPOINT_FREQ: 1  # every epoch, so an interrupted run resumes from its last finished epoch
  PRINT_FREQ: 20

TEST:
  FINAL_MODEL: "last_step"  # report the last epoch (nothing is selected on the test split)

MODEL:
  BACKBONE:
    NAME: "ViT-B/32"

TRAINER:
  __NODE__:
    PREC: "fp32"
'''

_SYNTHETIC_BACKBONE = '''
# No OpenAI CLIP fits this world: the scripts pass its tiny CLIP ($DATA/synthetic_fg/tiny_clip.pt); with
# train.py directly, give MODEL.BACKBONE.PATH (this name makes the loader's error say so).
MODEL:
  BACKBONE:
    NAME: "(none: pass MODEL.BACKBONE.PATH $DATA/synthetic_fg/tiny_clip.pt, which bash scripts/demo.sh builds)"
'''

SYNTHETIC_EVAL = '''# Synthetic world (docs/synthetic.md), for the demo and tests: the tiny CLIP's 32 px input, and the test
# split read through the same view path as the other methods (views from decoded images in memory).
INPUT:
  SIZE: (32, 32)

DATALOADER:
  NUM_WORKERS: 0
  GPU_VIEWS: "always"
  DECODED_CACHE: "memory"
''' + _SYNTHETIC_BACKBONE

SYNTHETIC_TRAIN = '''# Synthetic world (docs/synthetic.md): a CPU-sized schedule for the tiny CLIP (demo, tests), as the other
# self-training methods use: 32 px input, views from decoded images in memory (GPU_VIEWS always also runs
# on CPU), lr 1e-3 for 10 epochs (LayerNorm adaptation barely moves at 1e-4 in 130 steps), RandAugment off
# (its colour operations change the class of this world's colour-defined objects).
INPUT:
  SIZE: (32, 32)

DATALOADER:
  NUM_WORKERS: 0
  GPU_VIEWS: "always"
  DECODED_CACHE: "memory"

OPTIM:
  LR: 0.001
  MAX_EPOCH: 10

TRAIN:
  PRINT_FREQ: 13

TRAINER:
  __NODE__:
    RANDAUGMENT_N: 0
''' + _SYNTHETIC_BACKBONE

SCRIPT = '''#!/usr/bin/env bash
# __NAME__ over seeds (__WHAT__): bash scripts/__FOLDER__/main.sh DATASET [KEY VALUE ...]
# env: DATA (default ./data), SEEDS (default "1 2 3"), OUTPUT (default ./output), CFG (default vit_b32)
# title: __TITLE__
__ORDER__exec "$(dirname "${BASH_SOURCE[0]}")/../run_seeds.sh" __NAME__ __MODE__ "$@"
'''


class ScaffoldError(ValueError):
    pass


def plan(name, like="must", title=None, order=None, repo=None):
    """``{relative path: text}`` of the files the scaffold writes (nothing is written here)."""
    if like not in LIKES:
        raise ScaffoldError("--like {}: choose one of {}".format(like, ", ".join(LIKES)))
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name or "") or keyword.iskeyword(name):
        raise ScaffoldError("NAME {!r} must be a Python identifier starting with a letter (it is the trainer's "
                            "class name), e.g. EntMin".format(name))
    if title is not None and ("\n" in title or not title.strip()):
        raise ScaffoldError("--title must be one non-empty line")
    folder, node = name.lower(), name.upper()
    mode = "eval" if like == "zsclip" else "train"
    values = {"__NAME__": name, "__NODE__": node, "__FOLDER__": folder, "__LIKE__": like,
              "__TITLE__": (title or name).strip(), "__MODE__": mode,
              "__WHAT__": "training-free" if mode == "eval" else "train, then final test",
              "__ORDER__": "# order: {}\n".format(int(order)) if order is not None else ""}

    def fill(text):
        for key, value in values.items():
            text = text.replace(key, value)
        return text

    return {
        osp.join("trainers", folder + ".py"): fill(TRAINERS[like]),
        osp.join("configs", "trainers", name, "vit_b32.yaml"): fill(CONFIG_EVAL if mode == "eval" else CONFIG_TRAIN),
        osp.join("configs", "trainers", name, "per_dataset", "synthetic.yaml"): fill(
            SYNTHETIC_EVAL if mode == "eval" else SYNTHETIC_TRAIN),
        osp.join("scripts", folder, "main.sh"): fill(SCRIPT),
    }


def clashes(name, repo):
    """Why ``name`` cannot be used in the checkout at ``repo`` (empty when it can)."""
    problems = []
    folder, node = name.lower(), name.upper()
    trainers_dir = osp.join(repo, "trainers")
    for fname in sorted(os.listdir(trainers_dir)) if osp.isdir(trainers_dir) else []:
        if not fname.endswith(".py") or fname == folder + ".py":
            continue
        text = open(osp.join(trainers_dir, fname)).read()
        if re.search(r"^class {}\b".format(re.escape(name)), text, re.MULTILINE):
            problems.append("trainers/{} already defines class {}".format(fname, name))
        if re.search(r"cfg\.TRAINER\.{}\s*=".format(re.escape(node)), text):
            problems.append("trainers/{} already owns the config node TRAINER.{}".format(fname, node))
    from fairclip.tools import methods

    for m in methods.discover(repo):
        if m.name == folder and m.trainer != name:
            problems.append("scripts/{}/main.sh runs trainer {}".format(folder, m.trainer))
        elif m.name != folder and m.trainer.lower() == name.lower():
            problems.append("method '{}' (scripts/{}/main.sh) runs trainer {}".format(m.name, m.name, m.trainer))
    return problems


def write(files, repo, force=False):
    """Write ``files`` under ``repo`` (atomically each); refuse to overwrite unless ``force``."""
    existing = [rel for rel in files if osp.exists(osp.join(repo, rel))]
    if existing and not force:
        raise ScaffoldError("{} already exist{}; pick another NAME or pass --force to overwrite".format(
            ", ".join(existing), "s" if len(existing) == 1 else ""))
    for rel, text in files.items():
        path = osp.join(repo, rel)
        os.makedirs(osp.dirname(path), exist_ok=True)
        tmp = path + ".tmp-new-trainer"
        with open(tmp, "w") as f:
            f.write(text)
        if rel.endswith(".sh"):
            os.chmod(tmp, os.stat(tmp).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        os.replace(tmp, path)
    return [osp.join(repo, rel) for rel in files]


def scaffold(name, like="must", title=None, order=None, repo=None, force=False):
    """Write the new method's files into the checkout ``repo`` (default: this one); returns their paths."""
    repo = osp.abspath(repo or REPO)
    files = plan(name, like, title, order)
    problems = [] if force else clashes(name, repo)
    if problems:
        raise ScaffoldError("NAME {} is taken: {}; pick another NAME".format(name, "; ".join(problems)))
    return write(files, repo, force)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.new_trainer", description=__doc__.split("\n\n")[0])
    p.add_argument("name", metavar="NAME", help="the trainer's class name, e.g. EntMin (method folder: its lower case)")
    p.add_argument("--like", default="must", choices=LIKES,
                   help="starting point: must (self-training, default), fair (crops + description anchors), "
                        "zsclip (training-free)")
    p.add_argument("--title", help="display name in tables and listings (default: NAME)")
    p.add_argument("--order", type=int, help="place in tables and plots (shipped methods use 10-70; default: after them)")
    p.add_argument("--repo", default=None, help="the checkout to write into (default: this one)")
    p.add_argument("--force", action="store_true", help="overwrite the files of an earlier scaffold of NAME")
    args = p.parse_args(argv)
    try:
        paths = scaffold(args.name, args.like, args.title, args.order, args.repo, args.force)
    except ScaffoldError as exc:
        print("ERROR: {}".format(exc), file=sys.stderr)
        return 2
    repo = osp.abspath(args.repo or REPO)
    folder = args.name.lower()
    print("written:\n" + "\n".join("  " + osp.relpath(path, repo) for path in paths))
    print("next:\n"
          "  bash scripts/{f}/main.sh synthetic         # on the synthetic world (bash scripts/demo.sh builds it)\n"
          "  METHODS=\"zsclip {f}\" DATASETS=synthetic SEEDS=1 bash scripts/compare.sh   # a row in the table\n"
          "  then: the method's recipe in configs/trainers/{n}/vit_b32.yaml, its docstring, tests "
          "(docs/adding_a_trainer.md)".format(f=folder, n=args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
