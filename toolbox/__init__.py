"""The one import point for the Dassl API.

Trainers, dataset readers and ``train.py`` import every Dassl name from here. The backend is

* the real ``dassl`` package when it imports cleanly (``TOOLBOX`` unset or ``auto``);
* our mirror in ``toolbox/builtin`` otherwise, or when ``TOOLBOX=builtin``;
* ``TOOLBOX=dassl`` demands the real package and fails with a clear message if it cannot be imported.

``BACKEND`` says which one is active ("dassl" or "builtin"); ``train.py`` prints it in the run log.
``CFG_DEFAULT`` is the backend's default config node that ``get_cfg_default()`` clones (``fairclip.plugin``
adds our keys to it).
"""
import os

from .errors import UserError

_choice = os.environ.get("TOOLBOX", "auto").strip().lower() or "auto"
if _choice not in ("auto", "builtin", "dassl"):
    raise UserError(
        "environment variable TOOLBOX={!r} is not recognised; use 'builtin', 'dassl' or leave it unset".format(
            os.environ.get("TOOLBOX")
        )
    )

BACKEND = "builtin"
DASSL_IMPORT_ERROR = None

if _choice != "builtin":
    try:
        from dassl.config import cfg_default as CFG_DEFAULT, get_cfg_default
        from dassl.data import DataManager
        from dassl.data.data_manager import DatasetWrapper, build_data_loader
        from dassl.data.datasets import DATASET_REGISTRY, DatasetBase, Datum, build_dataset
        from dassl.data.samplers import build_sampler
        from dassl.data.transforms import INTERPOLATION_MODES, build_transform
        from dassl.engine import TRAINER_REGISTRY, SimpleTrainer, TrainerBase, TrainerX, build_trainer
        from dassl.evaluation import EVALUATOR_REGISTRY, build_evaluator
        from dassl.evaluation.evaluator import Classification
        from dassl.metrics import compute_accuracy
        from dassl.optim import build_lr_scheduler, build_optimizer
        from dassl.utils import (
            AverageMeter, MetricMeter, Registry, check_isfile, collect_env_info, count_num_param,
            listdir_nohidden, load_checkpoint, load_pretrained_weights, mkdir_if_missing, read_image,
            read_json, resume_from_checkpoint, save_checkpoint, set_random_seed, setup_logger,
            tolist_if_not, write_json,
        )

        BACKEND = "dassl"
    except Exception as exc:  # ImportError, or an import-time failure inside dassl (e.g. wilds)
        DASSL_IMPORT_ERROR = "{}: {}".format(type(exc).__name__, exc)
        if _choice == "dassl":
            raise UserError(
                "TOOLBOX=dassl but the dassl package cannot be imported ({}); install Dassl.pytorch "
                "(see README) or unset TOOLBOX to use the built-in engine".format(DASSL_IMPORT_ERROR)
            ) from exc

if BACKEND == "builtin":
    from .builtin.config import _C as CFG_DEFAULT, get_cfg_default
    from .builtin.data_manager import DataManager, DatasetWrapper, build_data_loader
    from .builtin.datasets import DATASET_REGISTRY, DatasetBase, Datum, build_dataset
    from .builtin.engine import TRAINER_REGISTRY, SimpleTrainer, TrainerBase, TrainerX, build_trainer
    from .builtin.evaluation import EVALUATOR_REGISTRY, Classification, build_evaluator, compute_accuracy
    from .builtin.optim import build_lr_scheduler, build_optimizer
    from .builtin.samplers import build_sampler
    from .builtin.transforms import INTERPOLATION_MODES, build_transform
    from .builtin.utils import (
        AverageMeter, MetricMeter, Registry, check_isfile, collect_env_info, count_num_param,
        listdir_nohidden, load_checkpoint, load_pretrained_weights, mkdir_if_missing, read_image,
        read_json, resume_from_checkpoint, save_checkpoint, set_random_seed, setup_logger,
        tolist_if_not, write_json,
    )

__all__ = [
    "BACKEND", "DASSL_IMPORT_ERROR", "UserError",
    "CFG_DEFAULT", "get_cfg_default",
    "TRAINER_REGISTRY", "TrainerBase", "SimpleTrainer", "TrainerX", "build_trainer",
    "DataManager", "DatasetWrapper", "build_data_loader", "build_sampler",
    "DATASET_REGISTRY", "DatasetBase", "Datum", "build_dataset",
    "INTERPOLATION_MODES", "build_transform",
    "EVALUATOR_REGISTRY", "Classification", "build_evaluator", "compute_accuracy",
    "build_optimizer", "build_lr_scheduler",
    "AverageMeter", "MetricMeter", "Registry", "check_isfile", "collect_env_info", "count_num_param",
    "listdir_nohidden", "load_checkpoint", "load_pretrained_weights", "mkdir_if_missing", "read_image",
    "read_json", "resume_from_checkpoint", "save_checkpoint", "set_random_seed", "setup_logger",
    "tolist_if_not", "write_json",
]
