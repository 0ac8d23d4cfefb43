"""What every CLIP trainer of this toolbox shares (runs unchanged on both toolbox backends).

* the data manager, with unreadable images skipped and counted (``datasets.common.SkipUnreadableWrapper``);
* the frozen CLIP (``MODEL.BACKBONE.NAME`` or ``.PATH``) and the dataset's class texts: templates
  (``DATASET.TEMPLATES``) and descriptions (``DATASET.DESCRIPTIONS``), encoded once and cached;
* ``test()``: the evaluation loop, which also writes ``results.json`` after the final test;
* ``load_model``: tolerant of checkpoints without ``val_result``; with no ``--load-epoch`` it loads the
  last checkpoint of the model dir (its ``checkpoint`` pointer);
* per-epoch logging (``log_epoch``) kept in the results' history;
* precision: ``autocast()`` is bf16 autocast over fp32 master weights when the trainer's PREC is bf16.
"""
import contextlib
import os.path as osp
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import datasets
from clip_backbone import description_bank, load_clip_from_cfg, template_classifier
from datasets.common import SkipUnreadableWrapper
from datasets.texts import load_descriptions
from toolbox import DataManager, TrainerX, load_checkpoint, read_json
from toolbox.errors import UserError
from toolbox.io import atomic_write_json

from ._results import build_results, write_results


class TrainableState(nn.Module):
    """A module whose checkpoints hold only its trainable tensors (plus ``extra_state_keys``).

    CLIP's frozen weights are rebuilt from the backbone file, so saving them every epoch would only
    cost disk. Loading tolerates the missing frozen keys but rejects unknown ones.
    """

    extra_state_keys = ()  # name prefixes of non-trainable entries to keep (e.g. running buffers)

    def state_dict(self, *args, **kwargs):
        # Used as a top-level registered model only (no parent passes a shared destination dict).
        full = super().state_dict(*args, **kwargs)
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        keep = tuple(self.extra_state_keys)
        return type(full)((k, v) for k, v in full.items() if k in trainable or (keep and k.startswith(keep)))

    def load_state_dict(self, state_dict, strict=True, assign=False):
        own = super().state_dict()
        unknown = [k for k in state_dict if k not in own]
        if unknown and strict:
            raise UserError("checkpoint has keys this model does not know: {} (was it written by another "
                            "trainer or backbone?)".format(unknown[:5]))
        return super().load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)


class ClipTrainer(TrainerX):
    """Base class: subclasses implement ``build_method()`` and ``model_inference(images)``; trainers
    that learn also implement ``forward_backward(batch)`` and register their trainable module."""

    # The config node of the trainer (e.g. "FAIR" for TRAINER.FAIR); used for PREC and the results.
    CFG_NODE = None

    # ------------------------------------------------------------------ construction
    def build_data_loader(self):
        dm = DataManager(
            self.cfg,
            custom_tfm_train=self.custom_train_transform(),
            custom_tfm_test=self.custom_test_transform(),
            dataset_wrapper=SkipUnreadableWrapper,
        )
        self.train_loader_x = dm.train_loader_x
        self.train_loader_u = dm.train_loader_u
        self.val_loader = dm.val_loader
        self.test_loader = dm.test_loader
        self.num_classes = dm.num_classes
        self.num_source_domains = dm.num_source_domains
        self.lab2cname = dm.lab2cname
        self.dm = dm

    def custom_train_transform(self):
        """A transform (or list of transforms) for the train loader; None = ``build_transform``."""
        return None

    def custom_test_transform(self):
        """A transform (or list) for the val/test loaders; None = CLIP's resize + center crop."""
        return None

    def build_model(self):
        cfg = self.cfg
        self.history = []
        self.train_images_seen = 0
        self.train_seconds = 0.0
        self.classnames = list(self.dm.dataset.classnames)
        self.dataset_key = datasets.key_for(cfg.DATASET.NAME)
        print("Loading CLIP ({})".format(cfg.MODEL.BACKBONE.PATH or cfg.MODEL.BACKBONE.NAME))
        self.clip_model, self.clip_info = load_clip_from_cfg(cfg, device=self.device)
        self.text_cache_dir = cfg.MODEL.TEXT_CACHE_DIR
        self.build_method()

    def build_method(self):
        raise NotImplementedError

    # ------------------------------------------------------------------ text side
    def templates(self):
        return datasets.templates_for(self.cfg)

    def template_classifier(self, templates=None):
        """``[K, D]`` class embeddings from templates (cached)."""
        return template_classifier(
            self.clip_model, self.classnames, templates or self.templates(), self.clip_info["fingerprint"],
            self.text_cache_dir,
        ).to(self.device)

    def descriptions_path(self):
        return datasets.descriptions_path(self.cfg)

    def descriptions(self):
        return load_descriptions(self.descriptions_path(), self.classnames)

    def description_bank(self):
        """``(emb [K, M, D], mask [K, M])`` of the class descriptions (cached)."""
        emb, mask = description_bank(
            self.clip_model, self.descriptions(), self.clip_info["fingerprint"], self.text_cache_dir
        )
        return emb.to(self.device), mask.to(self.device)

    def text_sources(self):
        """What the results record as the text protocol; trainers override to name what they use."""
        return {"templates": str(self.cfg.DATASET.TEMPLATES)}

    # ------------------------------------------------------------------ image side
    @property
    def prec(self):
        node = self.cfg.TRAINER.get(self.CFG_NODE) if self.CFG_NODE else None
        return node.PREC if node is not None and "PREC" in node else "fp32"

    def autocast(self):
        if self.prec == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def encode_images(self, images):
        """L2-normalised image features (fp32) of a batch of preprocessed images."""
        with self.autocast():
            feats = self.clip_model.encode_image(images)
        return F.normalize(feats.float(), dim=-1)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, split=None):
        """Run the evaluator on ``split``; returns a dict with ``split``, ``results`` (the evaluator's
        dict), ``per_class`` ({classname: accuracy}), ``n_images`` and ``images_per_s``."""
        self.set_model_mode("eval")
        self.evaluator.reset()
        split = split or self.cfg.TEST.SPLIT
        if split == "val" and self.val_loader is not None:
            loader = self.val_loader
        else:
            split = "test"
            loader = self.test_loader
        print("Evaluate on the *{}* set".format(split))
        correct = torch.zeros(self.num_classes, dtype=torch.long)
        total = torch.zeros(self.num_classes, dtype=torch.long)
        n_images = 0
        start = time.time()
        for batch in tqdm(loader, disable=not self.cfg.VERBOSE):
            images, labels = self.parse_batch_test(batch)
            logits = self.model_inference(images)
            self.evaluator.process(logits, labels)
            hits = (logits.argmax(1) == labels).long().cpu()
            correct.index_add_(0, labels.cpu(), hits)
            total.index_add_(0, labels.cpu(), torch.ones_like(hits))
            n_images += labels.shape[0]
        elapsed = max(time.time() - start, 1e-9)
        results = self.evaluator.evaluate()
        for k, v in results.items():
            self.write_scalar("{}/{}".format(split, k), v, self.epoch)
        per_class = {
            self.lab2cname[c]: (100.0 * correct[c].item() / total[c].item()) for c in range(self.num_classes)
            if total[c] > 0
        }
        return {"split": split, "results": results, "per_class": per_class, "n_images": n_images,
                "images_per_s": n_images / elapsed}

    def test(self, split=None):
        """Evaluate and return the accuracy; the final test (``split`` None) also writes results.json."""
        evaluation = self.evaluate(split)
        if split is None and self.history and "test_acc" not in self.history[-1]:
            self.history[-1]["test_acc"] = evaluation["results"]["accuracy"]  # the last epoch's test
        if split is None and self.cfg.TRAINER.WRITE_RESULTS:
            self.write_results(evaluation)
        return list(evaluation["results"].values())[0]

    def run_epoch(self):
        start = time.time()
        super().run_epoch()
        self.train_seconds += time.time() - start
        self.train_images_seen += self.num_batches * self.cfg.DATALOADER.TRAIN_X.BATCH_SIZE

    def write_results(self, evaluation):
        record = build_results(self, evaluation)
        path = osp.join(self.cfg.OUTPUT_DIR, "results.json")
        write_results(record, path)
        print("Results written to {}".format(path))

    # ------------------------------------------------------------------ checkpoints
    def load_model(self, directory, epoch=None):
        names = self.get_model_names()
        if not names:
            return  # nothing trained (zero-shot trainers)
        if not directory:
            raise UserError("this trainer has trained weights: give --model-dir (a finished run's output folder)")
        for name in names:
            folder = osp.join(directory, name)
            if epoch is not None:
                model_file = "model.pth.tar-{}".format(epoch)
            elif osp.isfile(osp.join(folder, "model-best.pth.tar")) and self.cfg.TEST.FINAL_MODEL == "best_val":
                model_file = "model-best.pth.tar"
            elif osp.isfile(osp.join(folder, "checkpoint")):
                with open(osp.join(folder, "checkpoint")) as f:
                    model_file = f.readline().strip()
            else:
                raise UserError("--model-dir {}: no checkpoint for '{}' (expected {}/checkpoint); point it at a "
                                "finished run's output folder".format(directory, name, folder))
            path = osp.join(folder, model_file)
            if not osp.isfile(path):
                raise UserError("--model-dir {}: {} does not exist (--load-epoch {} was never saved?)".format(
                    directory, path, epoch))
            checkpoint = load_checkpoint(path)
            print("Loading weights to {} from {} (epoch {})".format(name, path, checkpoint.get("epoch")))
            self._models[name].load_state_dict(checkpoint["state_dict"])
            self.loaded_epoch = checkpoint.get("epoch")

    # ------------------------------------------------------------------ logging
    def history_path(self):
        return osp.join(self.cfg.OUTPUT_DIR, "history.json")

    def before_train(self):
        super().before_train()
        # A resumed run keeps the per-epoch records of the epochs it does not redo.
        if self.start_epoch > 0 and osp.isfile(self.history_path()):
            self.history = [r for r in read_json(self.history_path()) if r.get("epoch", 0) <= self.start_epoch]

    def log_epoch(self, record):
        """Print one line per epoch and keep it for results.json (``history``) and TensorBoard."""
        record = dict(record, epoch=self.epoch + 1)
        self.history.append(record)
        atomic_write_json(self.history, self.history_path())
        print("epoch {} summary: ".format(self.epoch + 1) + " ".join(
            "{}={:.4g}".format(k, v) if isinstance(v, float) else "{}={}".format(k, v)
            for k, v in record.items() if k != "epoch"))
        for k, v in record.items():
            if isinstance(v, (int, float)) and k != "epoch":
                self.write_scalar("epoch/" + k, v, self.epoch + 1)


def visual_layernorms(clip_model):
    """The LayerNorm modules of CLIP's image tower (ln_pre, ln_1/ln_2 of every block, ln_post)."""
    return [m for m in clip_model.visual.modules() if isinstance(m, nn.LayerNorm)]


def unfreeze_visual_layernorms(clip_model):
    """Make only the visual LayerNorms trainable; returns their parameters."""
    for p in clip_model.parameters():
        p.requires_grad_(False)
    params = [p for m in visual_layernorms(clip_model) for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB
