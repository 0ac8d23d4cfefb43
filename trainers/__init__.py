"""Trainers: one module per method. Importing this package imports every module in it, which
registers each trainer class in ``toolbox.TRAINER_REGISTRY``.

A trainer module may define ``add_config(cfg)`` to add its ``TRAINER.<NAME>`` keys; ``train.py``
calls it (via ``add_trainer_configs``) before any config file is merged, so unknown keys fail.
"""
import importlib
import pkgutil

MODULES = [
    importlib.import_module("{}.{}".format(__name__, info.name))
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name)
    if not info.name.startswith("_")
]


def add_trainer_configs(cfg):
    for module in MODULES:
        add_config = getattr(module, "add_config", None)
        if add_config is not None:
            add_config(cfg)
