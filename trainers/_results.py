"""The ``results.json`` every run writes after its final test (docs/results.md).

The table tools read these files only (never logs). Protocol fields make each number's provenance
explicit: split, epochs, model-selection rule, text sources, world size and global batch.
"""
import datetime
import os.path as osp

import torch

from fairclip.config import config_name, unaliased
from fairclip.toolbox import BACKEND
from fairclip.toolbox.io import atomic_write_json

SCHEMA_VERSION = 1


def _selection_rule(trainer):
    if not trainer.get_model_names():
        return "none (no training)"
    if trainer.cfg.TEST.FINAL_MODEL == "best_val":
        return "best on val split"
    return "last epoch"


def _skipped(dataset, split):
    paths = list((getattr(dataset, "skipped_unreadable", None) or {}).get(split, []))
    return {"count": len(paths), "paths": paths}


def build_results(trainer, evaluation):
    from ._clip_base import peak_memory_mb  # local import: _clip_base imports this module

    cfg = trainer.cfg
    results, per_class = evaluation["results"], evaluation["per_class"]
    world_size = getattr(trainer, "world_size", 1)
    batch = cfg.DATALOADER.TRAIN_X.BATCH_SIZE
    trained = bool(trainer.get_model_names())
    record = {
        "schema": SCHEMA_VERSION,
        "dataset": unaliased(cfg.DATASET.NAME),  # fairclip.OxfordPets (plugin alias) is our OxfordPets
        "dataset_key": trainer.dataset_key,
        "trainer": unaliased(cfg.TRAINER.NAME),
        "cfg": config_name(cfg),
        "config_files": list(cfg.RUN.CONFIG_FILES),
        "seed": cfg.SEED,
        "backbone": trainer.clip_info["source"],
        "backbone_fingerprint": trainer.clip_info["fingerprint"],
        "metrics": {
            "accuracy": results.get("accuracy"),
            "error_rate": results.get("error_rate"),
            "macro_f1": results.get("macro_f1"),
            "mean_per_class_accuracy": (sum(per_class.values()) / len(per_class)) if per_class else None,
            "per_class_accuracy": per_class,
        },
        "protocol": {
            "split": evaluation["split"],
            "num_eval_images": evaluation["n_images"],
            "adaptation_data": "train split, labels unused" if trained else "none",
            "num_train_images": len(trainer.dm.dataset.train_x),
            "num_shots": cfg.DATASET.NUM_SHOTS,
            "subsample_classes": cfg.DATASET.SUBSAMPLE_CLASSES,
            "epochs": cfg.OPTIM.MAX_EPOCH if trained else 0,
            "evaluated_epoch": getattr(trainer, "loaded_epoch", None) or (trainer.epoch + 1 if trained else 0),
            "selection": _selection_rule(trainer),
            "text": trainer.text_sources(),
            "input_size": list(cfg.INPUT.SIZE),
            "precision": trainer.prec,
            "views": dict(getattr(trainer, "view_path", {})),  # cpu-pil or gpu, for train and test
            "world_size": world_size,
            "batch_per_process": batch,
            "global_batch": batch * world_size,
            "toolbox_backend": BACKEND,
            # Val/test images left out because they cannot be decoded (only with DATASET.SKIP_UNREADABLE_EVAL).
            "skipped_eval_images": _skipped(trainer.dm.dataset, evaluation["split"]),
            # Duplicated entries per split and test images also in train (datasets.common.inspect_splits).
            "data_checks": getattr(trainer.dm.dataset, "data_checks", None),
        },
        "timings": {
            "test_images_per_s": evaluation["images_per_s"],
            "train_images_per_s": (trainer.train_images_seen / trainer.train_seconds) if trainer.train_seconds else None,
            "train_seconds": trainer.train_seconds or None,
            "peak_memory_mb": peak_memory_mb(trainer.device),
            "device": torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else "cpu",
        },
        "history": trainer.history,
        "output_dir": osp.abspath(cfg.OUTPUT_DIR),
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    return record


def write_results(record, path):
    atomic_write_json(record, path)
