"""What every CLIP trainer of this toolbox shares (runs unchanged on both toolbox backends).

* the data manager, with unreadable images skipped and counted (``datasets.common.SkipUnreadableWrapper``);
* the frozen CLIP (``MODEL.BACKBONE.NAME`` or ``.PATH``) and the dataset's class texts: templates
  (``DATASET.TEMPLATES``) and descriptions (``DATASET.DESCRIPTIONS``), encoded once and cached;
* ``test()``: the evaluation loop, which also writes ``results.json`` after the final test;
* checkpoints (``trainers._checkpoints``, the same on both backends): written atomically with the run's
  identity and every random state and counter; read with ``weights_only=True`` and checked against the run
  (strict weights, same trainer / dataset / class count / backbone; resuming also needs the same training
  settings); a resumed run trains exactly what the uninterrupted run trains. ``load_model`` with no
  ``--load-epoch`` loads the last checkpoint of the model dir (its ``checkpoint`` pointer);
* the output folder (``trainers._run_folder``): locked for the run, and only the same run resumes in it;
* a training run also writes its class names (``classnames.json``) beside its checkpoints, so a model can be
  tested on a dataset whose classes are a subset or a reordering of them (ImageNet -> ImageNet-A/-R): per-class
  tensors (``per_class_dims``) keep the rows of the test set's classes, matched by class name;
* a reader marked ``EVAL_ONLY`` (the ImageNet test sets) is refused for training;
* per-epoch logging (``log_epoch``) kept in the results' history;
* precision: ``autocast()`` is bf16 autocast over fp32 master weights when the trainer's PREC is bf16;
* speed (docs/speed.md): GPU-side views from a decode-once cache for trainers that list their views
  (``gpu_train_views`` / ``gpu_test_views``, switched by ``DATALOADER.GPU_VIEWS``); an epoch loop without
  per-step host syncs; optional ``torch.compile`` of the image tower (``TRAINER.COMPILE``);
* DDP under torchrun (``trainers._distributed``): distributed train sampler, sharded evaluation with
  gathered predictions, rank-0-only checkpoints, TensorBoard, history and results.
"""
import contextlib
import datetime
import errno
import os
import os.path as osp
import random
import resource
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from fairclip import datasets
from fairclip.config import check_loader_keys
from fairclip.clip_backbone import description_bank, load_clip_from_cfg, template_classifier
from fairclip.clip_backbone.loading import freeze_batchnorm_statistics, visual_architecture
from fairclip.datasets.common import SkipUnreadableWrapper, eval_split_name
from fairclip.datasets.decoded_cache import CachedImages, canvas_loader, open_decoded_cache
from fairclip.datasets.texts import load_descriptions
from fairclip.toolbox import AverageMeter, DataManager, MetricMeter, TrainerX, read_json
from fairclip.toolbox.checkpoints import POINTER, pointer_epoch, pointer_target, safe_load
from fairclip.toolbox.errors import UserError
from fairclip.toolbox.io import atomic_torch_save, atomic_write_json, atomic_write_text

from . import _checkpoints, _distributed, _run_folder
from ._gpu_views import DeviceViewLoader, GpuViews, center_view
from ._losses import RunningMarginal
from ._pinned_loader import PinnedCenterLoader, use_pinned_center_loader
from ._results import build_results, write_results

GPU_VIEW_MODES = ("auto", "always", "never")


CLASSNAMES_FILE = "classnames.json"  # written beside a training run's checkpoints: the classes its model knows


class TrainableState(nn.Module):
    """A module whose checkpoints hold only its trainable tensors (plus ``extra_state_keys``).

    CLIP's frozen weights are rebuilt from the backbone file, so saving them every epoch would only
    cost disk. Loading (strict by default) needs every trained tensor with its shape and rejects unknown
    keys; the frozen keys may be absent.
    """

    extra_state_keys = ()  # name prefixes of non-trainable entries to keep (e.g. running buffers)
    per_class_dims = {}  # state-dict key -> the dimension that indexes classes (e.g. {"anchors": 0})

    def select_classes(self, state_dict, index):
        """``state_dict`` of a model trained on other classes, restricted to the rows ``index`` (a LongTensor:
        for each class of this model, its position among the trained model's classes)."""
        out = dict(state_dict)
        for key, dim in self.per_class_dims.items():
            if key in out:
                out[key] = out[key].index_select(dim, index.to(out[key].device))
        return out

    def state_dict(self, *args, **kwargs):
        # Used as a top-level registered model only (no parent passes a shared destination dict).
        full = super().state_dict(*args, **kwargs)
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        keep = tuple(self.extra_state_keys)
        return type(full)((k, v) for k, v in full.items() if k in trainable or (keep and k.startswith(keep)))

    def load_state_dict(self, state_dict, strict=True, assign=False):
        if strict:
            problem = _checkpoints.state_dict_problems(self, state_dict)
            if problem:
                raise UserError("the weights do not fit this model: {} (written by another trainer or "
                                "backbone?)".format(problem))
        own = super().state_dict()
        return super().load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)


class ClipTrainer(TrainerX):
    """Base class: subclasses implement ``build_method()`` and ``model_inference(images)``; trainers
    that learn also implement ``forward_backward(batch)`` and register their trainable module."""

    # The config node of the trainer (e.g. "FAIR" for TRAINER.FAIR); used for PREC and the results.
    CFG_NODE = None
    # Whether the trainer's training step is correct under DDP (gradients synced through
    # ``_distributed.wrap_model``, batch statistics over the global batch), or the trainer does not train.
    # Others refuse to run on several processes rather than silently optimise a different objective.
    SUPPORTS_DDP = False

    # ------------------------------------------------------------------ construction
    def build_data_loader(self):
        check_loader_keys(self.cfg)
        cap_num_workers(self.cfg)
        dm = DataManager(
            self.cfg,
            custom_tfm_train=self.custom_train_transform(),
            custom_tfm_test=self.custom_test_transform(),
            dataset_wrapper=SkipUnreadableWrapper,
        )
        self.rank, self.world_size = _distributed.rank(), _distributed.world_size()
        if self.world_size > 1 and not self.SUPPORTS_DDP:
            raise UserError("{} does not support training on several processes yet (world size {}); run it with "
                            "one process per GPU instead (tools/run_jobs.py spreads runs over GPUs)".format(
                                self.cfg.TRAINER.NAME, self.world_size))
        self.train_loader_x = _distributed.train_loader(dm.train_loader_x, self.cfg.SEED)
        self.train_loader_u = dm.train_loader_u
        self.val_loader = _distributed.eval_loader(dm.val_loader)
        self.test_loader = _distributed.eval_loader(dm.test_loader)
        self.num_classes = dm.num_classes
        self.num_source_domains = dm.num_source_domains
        self.lab2cname = dm.lab2cname
        self.dm = dm
        self.view_path = {"train": "cpu-pil", "test": "cpu-pil"}
        if self.use_gpu_views():
            self.build_gpu_view_loaders(dm)
        if self.world_size > 1:
            batch = self.cfg.DATALOADER.TRAIN_X.BATCH_SIZE
            print("Distributed: {} processes, batch {} per process, global batch {}".format(
                self.world_size, batch, batch * self.world_size))

    # ------------------------------------------------------------------ GPU-side views (opt-in per trainer)
    def gpu_train_views(self):
        """The training views for the GPU path, in the order of ``custom_train_transform()`` (batch keys
        img, img2, ...), as ``trainers._gpu_views`` specs; None: this trainer has no GPU path."""
        return None

    def gpu_test_views(self):
        """The test views for the GPU path; by default CLIP's normalised centre view when the trainer
        keeps the standard test transform, else None (the CPU path)."""
        standard = self.custom_test_transform() is None and "normalize" in self.cfg.INPUT.TRANSFORMS
        return [center_view()] if standard else None

    def check_choices(self, cfg, choices):
        """Each ``TRAINER.<CFG_NODE>.<KEY>`` named in ``choices`` ({KEY: allowed values}) holds an allowed
        value (called from ``check_cfg``, which runs before ``self.cfg`` is set)."""
        node = cfg.TRAINER[self.CFG_NODE]
        for key, allowed in choices.items():
            if node[key] not in allowed:
                raise UserError("TRAINER.{}.{}={!r} is not one of {}".format(
                    self.CFG_NODE, key, node[key], ", ".join(allowed)))

    def use_gpu_views(self):
        mode = str(self.cfg.DATALOADER.GPU_VIEWS).lower()
        if mode not in GPU_VIEW_MODES:
            raise UserError("DATALOADER.GPU_VIEWS={!r} is not one of {}".format(
                self.cfg.DATALOADER.GPU_VIEWS, ", ".join(GPU_VIEW_MODES)))
        return mode == "always" or (mode == "auto" and self.device.type == "cuda")

    def cached_loader(self, items, split, is_train, center_only=False):
        """A DataLoader of uint8 canvases over ``items`` from the decode-once cache. ``center_only``: the
        split needs only the centre view, so its images are cached at the input size (the centre view is
        then CLIP's resize + crop, nearly pixel for pixel) and batched as central squares."""
        cfg = self.cfg
        side = max(cfg.INPUT.SIZE) if center_only else cfg.DATALOADER.DECODED_CACHE_SIDE
        cache = open_decoded_cache(
            [item.impath for item in items], side, cfg.DATALOADER.DECODED_CACHE,
            cfg.DATALOADER.DECODED_CACHE_DIR, workers=cfg.DATALOADER.NUM_WORKERS,
            max_unreadable=cfg.DATASET.MAX_UNREADABLE, label="{} {}".format(cfg.DATASET.NAME, split),
            eval_split=eval_split_name(items))
        batch = cfg.DATALOADER.TRAIN_X.BATCH_SIZE if is_train else cfg.DATALOADER.TEST.BATCH_SIZE
        # The train loader shuffles with its own generators (checkpointed), not the global stream.
        seed = max(int(cfg.SEED), 0) * 1000 + self.rank + 250 if is_train else None
        return canvas_loader(CachedImages(items, cache), batch, is_train, cfg.DATALOADER.NUM_WORKERS,
                             pin_memory=self.device.type == "cuda", center_square=center_only, seed=seed)

    def build_gpu_view_loaders(self, dm):
        seed = max(int(self.cfg.SEED), 0) * 1000 + self.rank
        views = GpuViews.from_cfg(self.cfg, self.device, seed=seed)
        # Test views (random only for test-time crops) have their own generator, reseeded at every pass:
        # an evaluation never moves the training stream and every evaluation sees the same crops.
        test_views = GpuViews.from_cfg(self.cfg, self.device, seed=seed + 500)
        train_specs, test_specs = self.gpu_train_views(), self.gpu_test_views()
        if train_specs:
            loader = self.cached_loader(dm.dataset.train_x, "train", is_train=True)
            self.train_loader_x = DeviceViewLoader(_distributed.train_loader(loader, self.cfg.SEED), views, train_specs)
            self.view_path["train"] = "gpu"
        if test_specs:
            center_only = all(spec.kind == "center" for spec in test_specs)
            loader = _distributed.eval_loader(
                self.cached_loader(dm.dataset.test, "test", is_train=False, center_only=center_only))
            workers = self.cfg.DATALOADER.NUM_WORKERS
            if center_only and use_pinned_center_loader(self.device, workers):
                # threads gather straight into pinned memory: the worker-process path halves evaluation speed
                loader = PinnedCenterLoader(loader.dataset, loader.sampler, loader.batch_size, self.device,
                                            threads=min(4, workers))
            self.test_loader = DeviceViewLoader(loader, test_views, test_specs, reseed=True)
            uses_val = self.cfg.TEST.SPLIT == "val" or self.cfg.TEST.FINAL_MODEL == "best_val"
            if dm.dataset.val and uses_val:  # else the val split is never read: not worth decoding
                loader = self.cached_loader(dm.dataset.val, "val", is_train=False, center_only=center_only)
                self.val_loader = DeviceViewLoader(_distributed.eval_loader(loader), test_views, test_specs, reseed=True)
            self.view_path["test"] = "gpu"
        print("Views: train on {train}, test on {test}".format(**self.view_path))

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
        if cfg.TRAINER.COMPILE:
            self.clip_model.visual.compile()  # in place: parameter names and checkpoints are unchanged
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
        dict), ``per_class`` ({classname: accuracy}), ``n_images`` and ``images_per_s``.

        Predictions stay on the device until the loop ends (one host sync); under DDP each rank scores
        its shard and the predictions of all ranks are gathered before the metrics.
        """
        self.set_model_mode("eval")
        self.evaluator.reset()
        split = split or self.cfg.TEST.SPLIT
        if split == "val" and self.val_loader is not None:
            loader = self.val_loader
        else:
            split = "test"
            loader = self.test_loader
        print("Evaluate on the *{}* set".format(split))
        preds, labels = [], []
        start = time.time()
        # A diagnostic evaluation during training must not move the training's random stream (a loader
        # iterator draws its base seed from it; CPU test-time crops draw from Python's): evaluate on forked
        # torch, Python and NumPy generators.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), forked_host_rng():
            for batch in tqdm(loader, disable=not (self.cfg.VERBOSE and _distributed.is_main())):
                images, label = self.parse_batch_test(batch)
                preds.append(self.model_inference(images).argmax(1))
                labels.append(label)
        empty = torch.zeros(0, dtype=torch.long)
        pred = _distributed.gather_cat(torch.cat(preds).cpu() if preds else empty)
        gt = _distributed.gather_cat(torch.cat(labels).cpu() if labels else empty)
        elapsed = max(time.time() - start, 1e-9)
        # The evaluator's metrics use only the argmax of its scores: one-hot scores of the predictions.
        for i in range(0, len(pred), 4096):
            self.evaluator.process(F.one_hot(pred[i:i + 4096], self.num_classes).float(), gt[i:i + 4096])
        results = self.evaluator.evaluate()
        for k, v in results.items():
            self.write_scalar("{}/{}".format(split, k), v, self.epoch)
        correct = torch.bincount(gt[pred == gt], minlength=self.num_classes)
        total = torch.bincount(gt, minlength=self.num_classes)
        per_class = {
            self.lab2cname[c]: (100.0 * correct[c].item() / total[c].item()) for c in range(self.num_classes)
            if total[c] > 0
        }
        return {"split": split, "results": results, "per_class": per_class, "n_images": len(gt),
                "images_per_s": len(gt) / elapsed}

    def test(self, split=None):
        """Evaluate and return the accuracy; the final test (``split`` None) also writes results.json."""
        evaluation = self.evaluate(split)
        if split is None and self.history and "test_acc" not in self.history[-1]:
            self.history[-1]["test_acc"] = evaluation["results"]["accuracy"]  # the last epoch's test
        if split is None and self.cfg.TRAINER.WRITE_RESULTS:
            self.write_results(evaluation)
        return list(evaluation["results"].values())[0]

    def run_epoch(self):
        """The engine's epoch loop (same printed lines and TensorBoard tags) without a host sync per step:
        meters keep device tensors (built-in backend), scalars are written at print steps only, and on
        GPU the non-finite-loss check runs at those steps too (``detect_anomaly``)."""
        self.set_model_mode("train")
        _distributed.set_epoch(self.train_loader_x, self.epoch)
        losses, batch_time, data_time = MetricMeter(), AverageMeter(), AverageMeter()
        self.num_batches = len(self.train_loader_x)
        print_freq = self.cfg.TRAIN.PRINT_FREQ
        start = end = time.time()
        for self.batch_idx, batch in enumerate(self.train_loader_x):
            data_time.update(time.time() - end)
            loss_summary = self.forward_backward(batch)
            batch_time.update(time.time() - end)
            losses.update(loss_summary)
            if (self.batch_idx + 1) % print_freq == 0 or self.num_batches < print_freq:
                self.check_finite_loss()
                nb_remain = self.num_batches - self.batch_idx - 1
                nb_remain += (self.max_epoch - self.epoch - 1) * self.num_batches
                eta = str(datetime.timedelta(seconds=int(batch_time.avg * nb_remain)))
                print(" ".join([
                    "epoch [{}/{}]".format(self.epoch + 1, self.max_epoch),
                    "batch [{}/{}]".format(self.batch_idx + 1, self.num_batches),
                    "time {:.3f} ({:.3f})".format(batch_time.val, batch_time.avg),
                    "data {:.3f} ({:.3f})".format(data_time.val, data_time.avg),
                    "{}".format(losses),
                    "lr {:.4e}".format(self.get_current_lr()),
                    "eta {}".format(eta),
                ]))
                n_iter = self.epoch * self.num_batches + self.batch_idx
                for name, meter in losses.meters.items():
                    self.write_scalar("train/" + name, meter.avg, n_iter)
                self.write_scalar("train/lr", self.get_current_lr(), n_iter)
            end = time.time()
        self.check_finite_loss()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # honest epoch time
        self.train_seconds += time.time() - start
        self.train_images_seen += self.num_batches * self.cfg.DATALOADER.TRAIN_X.BATCH_SIZE * self.world_size

    def detect_anomaly(self, loss):
        """Called by ``model_backward`` before every backward. CPU: a non-finite loss is a one-line error at
        once (the engine would raise a bare FloatingPointError). GPU: remember it on the device and raise at
        the next print step or at the epoch end (``check_finite_loss``), so no step waits for the host."""
        bad = ~torch.isfinite(loss.detach()).all()
        if self.device.type != "cuda":
            if bool(bad):
                raise self._nonfinite_error("at epoch {} batch {}")
            return
        flag = getattr(self, "_nonfinite", None)
        self._nonfinite = bad if flag is None else flag | bad

    def check_finite_loss(self):
        flag = getattr(self, "_nonfinite", None)
        if flag is not None and bool(flag):
            self._nonfinite = None
            raise self._nonfinite_error("in epoch {} (found by batch {})")

    def _nonfinite_error(self, where):
        """The one-line error for a non-finite loss; ``where`` formats the epoch and the batch."""
        return UserError("{}: non-finite loss {}; lower OPTIM.LR or use TRAINER.{}.PREC fp32".format(
            self.cfg.TRAINER.NAME, where.format(self.epoch + 1, self.batch_idx + 1),
            self.CFG_NODE or self.cfg.TRAINER.NAME))

    def write_results(self, evaluation):
        if not _distributed.is_main():
            return
        record = build_results(self, evaluation)
        path = osp.join(self.cfg.OUTPUT_DIR, "results.json")
        with write_errors(path):
            write_results(record, path)
        print("Results written to {}".format(path))

    # ------------------------------------------------------------------ the loop
    def train(self, start_epoch=None, max_epoch=None):
        """The engine's loop (``before_train``, epochs, ``after_train``) with exact resume: the random state
        a checkpoint recorded is restored after every ``before_train`` hook has run (a hook may draw random
        numbers, e.g. a loader over the train split), i.e. just before the first epoch trains."""
        self.start_epoch = self.start_epoch if start_epoch is None else start_epoch
        self.max_epoch = self.max_epoch if max_epoch is None else max_epoch
        self._resume_state = None
        self.before_train()  # resumes: self.start_epoch, weights, optimizer, scheduler, counters
        if self._resume_state is not None:
            _checkpoints.restore_rank_random_state(self, self._resume_state)
            self._resume_state = None
        if self.start_epoch > 0:
            self.epoch = self.start_epoch - 1  # the last epoch done (a finished run resumed at its end)
        for self.epoch in range(self.start_epoch, self.max_epoch):
            self.before_epoch()
            self.run_epoch()
            self.after_epoch()
        self.after_train()

    def extra_checkpoint_state(self):
        """Trainer state outside the registered modules that may carry from one epoch to the next (tensors
        and plain values), saved with every checkpoint; ``load_extra_checkpoint_state`` puts it back on
        resume. Here: the value of every ``RunningMarginal`` attribute (the shipped trainers reset theirs in
        ``before_epoch``, so nothing else carries over). A trainer that adds state extends both (and calls
        super)."""
        return {"running_marginals": {name: obj.value for name, obj in vars(self).items()
                                      if isinstance(obj, RunningMarginal)}}

    def load_extra_checkpoint_state(self, state):
        for name, value in (state.get("running_marginals") or {}).items():
            marginal = getattr(self, name, None)
            if isinstance(marginal, RunningMarginal):
                marginal.value = value.to(self.device) if torch.is_tensor(value) else value

    # ------------------------------------------------------------------ checkpoints
    def save_model(self, epoch, directory, is_best=False, val_result=None, model_name=""):
        """Write each registered model's checkpoint atomically (``toolbox.io``, on both backends) with the
        run's identity and resume state; regular checkpoints also move the ``checkpoint`` pointer (a
        ``model_name`` such as model-best.pth.tar does not). Disk full or any write error: one line saying
        which checkpoint is still intact."""
        run_state = _checkpoints.capture_run_state(self)  # every rank takes part (DDP)
        if not _distributed.is_main():  # every rank holds the same weights; one writes them
            return
        ident = _checkpoints.identity(self)
        for name in self.get_model_names():
            folder = osp.join(directory, name)
            file_name = model_name or "model.pth.tar-{}".format(epoch + 1)
            path = osp.join(folder, file_name)
            state = _checkpoints.checkpoint_state(self._models[name], self._optims[name], self._scheds[name],
                                                  epoch, val_result, ident, run_state)
            try:
                atomic_torch_save(state, path)
                if not model_name:
                    atomic_write_text(file_name + "\n", osp.join(folder, POINTER))
                if is_best:
                    atomic_torch_save(state, osp.join(folder, "model-best.pth.tar"))
            except OSError as exc:
                raise self._write_failure(path, folder, exc) from exc
            print('Checkpoint saved to "{}"'.format(path))
        try:
            atomic_write_json({"dataset": self.cfg.DATASET.NAME, "classnames": self.classnames},
                              osp.join(directory, CLASSNAMES_FILE))
        except OSError as exc:
            raise self._write_failure(osp.join(directory, CLASSNAMES_FILE), folder, exc) from exc

    def _write_failure(self, path, folder, exc):
        done = pointer_epoch(folder) if osp.isfile(osp.join(folder, POINTER)) else None
        kept = ("the last good checkpoint ({}, epoch {}) is intact: free space and rerun the same command to "
                "resume from epoch {}".format(osp.join(folder, "model.pth.tar-{}".format(done)), done, done + 1)
                if done else "no earlier checkpoint of this run exists, so a rerun starts from epoch 1")
        return UserError("cannot write checkpoint {} ({}); {}".format(path, describe_os_error(exc), kept))

    def resume_model_if_exist(self, directory):
        """Resume from the checkpoints in ``directory`` (pointer -> file in the same folder, weights-only
        load, identity and training settings checked, strict weights), or start from scratch when none."""
        names = self.get_model_names()
        folders = [osp.join(directory, name) for name in names]
        have = [osp.isfile(osp.join(folder, POINTER)) for folder in folders]
        if not any(have):
            print("No checkpoint found, train from scratch")
            return 0
        if not all(have):
            raise UserError("{}: checkpoints exist for {} but not for {}; pass --fresh (scripts: FRESH=1) to start "
                            "afresh".format(directory, [n for n, h in zip(names, have) if h],
                                            [n for n, h in zip(names, have) if not h]))
        print("Found checkpoint at {} (will resume training)".format(directory))
        epochs, run_state = [], None
        for name, folder in zip(names, folders):
            path = pointer_target(folder)
            checkpoint = safe_load(path)
            _checkpoints.check_identity(checkpoint, self, path, resume=True)
            _checkpoints.load_weights(self._models[name], checkpoint["state_dict"], path)
            for what, obj in (("optimizer", self._optims[name]), ("scheduler", self._scheds[name])):
                if obj is None:
                    continue
                try:
                    obj.load_state_dict(checkpoint[what])
                except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as exc:
                    raise UserError("checkpoint {}: its {} state does not fit this run ({}); pass --fresh "
                                    "(scripts: FRESH=1) to start afresh".format(
                                        path, what, (str(exc).splitlines() or [type(exc).__name__])[0])) from exc
            epochs.append(int(checkpoint["epoch"]))
            run_state = checkpoint[_checkpoints.KEY]["resume"]
            print("Resuming {} from {} ({} epoch(s) done)".format(name, path, epochs[-1]))
        if len(set(epochs)) > 1:
            raise UserError("{}: the models' checkpoints are at different epochs {}; pass --fresh (scripts: "
                            "FRESH=1) to start afresh".format(directory, epochs))
        _checkpoints.restore_counters(self, run_state)
        self._resume_state = run_state  # random state: restored when the first epoch starts (train())
        return epochs[0]

    def class_index_from(self, directory):
        """For a model trained on other classes: a LongTensor giving, for each class of this dataset, its
        position among the classes of the model in ``directory`` (matched by name); None when they are the
        same list, or when the run predates ``classnames.json`` (then shapes must match)."""
        path = osp.join(directory, CLASSNAMES_FILE)
        if not osp.isfile(path):
            return None
        trained = read_json(path)
        source = list(trained["classnames"])
        if source == self.classnames:
            return None
        where = {}
        for i, name in enumerate(source):
            where.setdefault(name, []).append(i)
        unknown = [n for n in self.classnames if n not in where]
        if unknown:
            raise UserError("--model-dir {} was trained on {} ({} classes), which lacks {} of this dataset's {} classes "
                            "(first: {!r}); test it on a dataset whose classes it knows".format(
                                directory, trained.get("dataset"), len(source), len(unknown), len(self.classnames),
                                unknown[0]))
        ambiguous = [n for n in self.classnames if len(where[n]) > 1]
        if ambiguous:
            raise UserError("--model-dir {}: class name {!r} appears {} times among the trained classes ({}), so this "
                            "dataset's classes cannot be matched to them by name".format(
                                directory, ambiguous[0], len(where[ambiguous[0]]), path))
        print("The model knows {} classes of {}; testing on {} of them, {} (matched by class name)".format(
            len(source), trained.get("dataset"), len(self.classnames), self.cfg.DATASET.NAME))
        return torch.tensor([where[n][0] for n in self.classnames], dtype=torch.long)

    def load_model(self, directory, epoch=None):
        names = self.get_model_names()
        if not names:
            return  # nothing trained (zero-shot trainers)
        if not directory:
            raise UserError("this trainer has trained weights: give --model-dir (a finished run's output folder)")
        index = self.class_index_from(directory)
        for name in names:
            folder = osp.join(directory, name)
            if epoch is not None:
                path = osp.join(folder, "model.pth.tar-{}".format(epoch))
            elif osp.isfile(osp.join(folder, "model-best.pth.tar")) and self.cfg.TEST.FINAL_MODEL == "best_val":
                path = osp.join(folder, "model-best.pth.tar")
            elif osp.isfile(osp.join(folder, POINTER)):
                path = pointer_target(folder)
            else:
                raise UserError("--model-dir {}: no checkpoint for '{}' (expected {}/checkpoint); point it at a "
                                "finished run's output folder".format(directory, name, folder))
            if not osp.isfile(path):
                raise UserError("--model-dir {}: {} does not exist (--load-epoch {} was never saved?)".format(
                    directory, path, epoch))
            checkpoint = safe_load(path)
            diffs = _checkpoints.check_identity(checkpoint, self, path, resume=False)
            state = checkpoint["state_dict"]
            if index is not None:
                state = self._models[name].select_classes(state, index)
            _checkpoints.load_weights(self._models[name], state, path, diffs)
            print("Loading weights to {} from {} (epoch {})".format(name, path, checkpoint.get("epoch")))
            if diffs:
                print("Note: {} was trained with other settings than this run's: {}".format(
                    path, _run_folder.summarize(diffs)))
            self.loaded_epoch = checkpoint.get("epoch")

    # ------------------------------------------------------------------ logging
    def history_path(self):
        return osp.join(self.cfg.OUTPUT_DIR, "history.json")

    def before_train(self):
        if getattr(self.dm.dataset, "EVAL_ONLY", False) and self.get_model_names():
            raise UserError("{} is an evaluation-only test set (its images are the test split): adapt on ImageNet and "
                            "test the model here with --eval-only --model-dir <that run's output folder>".format(
                                self.cfg.DATASET.NAME))
        if _distributed.is_main():
            _run_folder.prepare(self.cfg)  # lock + config record (already done by train.py: a no-op then)
        super().before_train()  # resume (history and counters come back from the checkpoint), writer

    def init_writer(self, log_dir):
        if _distributed.is_main():
            super().init_writer(log_dir)

    def log_epoch(self, record):
        """Print one line per epoch and keep it for results.json (``history``) and TensorBoard. With
        ``TRAINER.<CFG_NODE>.EVAL_EACH_EPOCH`` every epoch but the last (the final test covers that one)
        also records its test accuracy, a diagnostic that never selects a model."""
        if self.cfg.TRAINER[self.CFG_NODE].get("EVAL_EACH_EPOCH", False) and self.epoch + 1 != self.max_epoch:
            record = dict(record, test_acc=self.evaluate()["results"]["accuracy"])
            self.set_model_mode("train")
        record = dict(record, epoch=self.epoch + 1)
        self.history.append(record)
        if not _distributed.is_main():
            return
        with write_errors(self.history_path()):
            atomic_write_json(self.history, self.history_path())
        print("epoch {} summary: ".format(self.epoch + 1) + " ".join(
            "{}={:.4g}".format(k, v) if isinstance(v, float) else "{}={}".format(k, v)
            for k, v in record.items() if k != "epoch"))
        for k, v in record.items():
            if isinstance(v, (int, float)) and k != "epoch":
                self.write_scalar("epoch/" + k, v, self.epoch + 1)


@contextlib.contextmanager
def forked_host_rng():
    """Run a block without moving Python's and NumPy's global random streams."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def describe_os_error(exc):
    name = errno.errorcode.get(exc.errno, "") if exc.errno else ""
    text = exc.strerror or str(exc)
    return "{}{}".format(text, " [{}]".format(name) if name else "")


@contextlib.contextmanager
def write_errors(path):
    """A failed write of ``path`` (disk full, read-only, ...) becomes one line naming the file."""
    try:
        yield
    except OSError as exc:
        raise UserError("cannot write {} ({}); free space or fix the folder's permissions, then rerun the same "
                        "command (a training run resumes from its last checkpoint)".format(
                            path, describe_os_error(exc))) from exc


def available_cpus():
    """The CPUs this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cap_num_workers(cfg):
    """Lower ``DATALOADER.NUM_WORKERS`` to the CPUs available (more loader processes than CPUs only compete,
    and torch warns about each loader); says so in one line. Returns the value used."""
    workers, cpus = int(cfg.DATALOADER.NUM_WORKERS), available_cpus()
    if workers <= cpus:
        return workers
    frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.DATALOADER.NUM_WORKERS = cpus
    if frozen:
        cfg.freeze()
    print("DATALOADER.NUM_WORKERS {} -> {}: this machine lets the run use {} CPU{}".format(
        workers, cpus, cpus, "s" if cpus != 1 else ""))
    return cpus


def visual_layernorms(clip_model):
    """The LayerNorm modules of CLIP's image tower (ln_pre, ln_1/ln_2 of every block, ln_post)."""
    return [m for m in clip_model.visual.modules() if isinstance(m, nn.LayerNorm)]


def visual_norms(clip_model):
    """The normalisation layers of CLIP's image tower that the norm-tuning trainers (FAIR, MUST, DPA) train.

    * ViT (ViT-B/32, B/16, L/14...): every LayerNorm (``visual_layernorms``);
    * ModifiedResNet (RN50, RN101, RN50x4...), which has no LayerNorm: every BatchNorm2d (the stem's three,
      three per bottleneck and one per downsample branch). The rule for these: **only their affine weight and
      bias train; the running statistics stay the pretrained ones** (the layers always normalise in eval mode,
      ``clip_backbone.loading.FrozenStatsBatchNorm2d``), so a BatchNorm plays the part of a LayerNorm's gain
      and bias and the result does not depend on the batch size.
    """
    if visual_architecture(clip_model) == "vit":
        return visual_layernorms(clip_model)
    freeze_batchnorm_statistics(clip_model.visual)  # already so when loaded by clip_backbone.load_clip
    return [m for m in clip_model.visual.modules() if isinstance(m, nn.BatchNorm2d)]


def visual_norms_description(clip_model):
    """What ``unfreeze_visual_norms`` trains, in words (for logs)."""
    if visual_architecture(clip_model) == "vit":
        return "visual LayerNorms"
    return "visual BatchNorm weights and biases (running statistics frozen)"


def unfreeze_visual_norms(clip_model):
    """Make only the image tower's normalisation layers trainable (``visual_norms``: the LayerNorms of a
    ViT, the BatchNorm affine parameters of a ResNet); returns their parameters."""
    for p in clip_model.parameters():
        p.requires_grad_(False)
    norms = visual_norms(clip_model)
    params = [p for m in norms for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    if visual_architecture(clip_model) != "vit":
        print("ResNet image tower: training the weight and bias of its {} BatchNorm layers ({} parameters); "
              "their running statistics stay frozen".format(len(norms), sum(p.numel() for p in params)))
    return params


def unfreeze_visual_layernorms(clip_model):
    """Make only the visual normalisation layers trainable; returns their parameters. The LayerNorms of a
    ViT; on a ResNet tower (no LayerNorm) the BatchNorm affine parameters with frozen running statistics
    (``unfreeze_visual_norms``, which this name delegates to)."""
    return unfreeze_visual_norms(clip_model)


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB
