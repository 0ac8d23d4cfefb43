"""Use this toolbox inside a CoOp-family checkout (CoOp, CoCoOp, UPL, LaFTer, MaPLe, PromptSRC, ...).

After ``pip install -e /path/to/this/repo``, add one line to the host's ``train.py``, next to its own
trainer and dataset imports::

    import fairclip.plugin  # noqa: F401  (FAIR-CLIP's trainers, readers and config keys)

Importing it

* registers our trainers (FAIR, MUST, DPA, ...) and dataset readers in the host's registries (real Dassl
  when it is installed, else our built-in mirror). A name the host registers too (CoOp's own
  ``ZeroshotCLIP``, its ``OxfordPets`` reader, ...) stays the host's, so the host's runs do not change,
  and ours is registered as ``fairclip.<name>`` instead (``--trainer fairclip.ZeroshotCLIP``); this holds
  whether the host registers the name before or after this import. The names concerned are printed;
* adds our config keys (``TRAINER.FAIR``, ``MODEL.BACKBONE.PATH``, ``DATASET.TEMPLATES``, ...) to the
  default config that the host's ``get_cfg_default()`` clones, so no call in ``setup_cfg`` is needed;
* makes that config find per-dataset overrides on its own: merging
  ``configs/trainers/FAIR/vit_b32.yaml`` after the dataset config also merges
  ``configs/trainers/FAIR/per_dataset/<dataset>.yaml`` when it exists (the host's CLI needs no new flag),
  and ``RUN.CONFIG_FILES`` (recorded in results.json) lists every file merged.

Our packages are imported as ``fairclip.trainers``/``fairclip.datasets``, so the host's top-level
``trainers`` and ``datasets`` packages are never shadowed.
"""
import sys

from fairclip import toolbox
from fairclip.config import ALIAS_PREFIX, as_run_config, extend_cfg
from fairclip.toolbox.errors import UserError

KEPT_HOST_NAMES = []  # names both the host and we register: the host's object keeps the name


def _check_backend():
    """The host's Dassl and ours must be the same registries."""
    if "dassl" in sys.modules and toolbox.BACKEND != "dassl":
        raise UserError(
            "fairclip.plugin: the host uses Dassl but this toolbox runs on its built-in mirror ({}), so our trainers "
            "would land in other registries; unset TOOLBOX (or fix the Dassl import)".format(
                "TOOLBOX=builtin" if not toolbox.DASSL_IMPORT_ERROR else toolbox.DASSL_IMPORT_ERROR))


class _HostFirst:
    """Installed as a registry's ``_do_register`` (the method Dassl's ``register`` calls, which our mirror
    shares) for the rest of the process: a name registered both by the host and by us is the host's,
    whichever registers first, and ours moves to ``fairclip.<name>``. Every other registration is unchanged."""

    importing = False  # True while our own modules register

    def __init__(self, registry):
        self.registry = registry
        self.register = registry._do_register  # the bound original
        self.ours = {}  # name -> our object registered under that name

    def __call__(self, name, obj, force=False):
        taken = self.registry._obj_map
        if _HostFirst.importing:
            if name in taken and not force:
                self._keep_host(name, obj)
                return
            self.register(name, obj, force=force)
            self.ours[name] = obj
            return
        if name in self.ours and taken.get(name) is self.ours[name]:  # the host registers a name we took
            self._keep_host(name, taken.pop(name))
            del self.ours[name]
        self.register(name, obj, force=force)

    def _keep_host(self, name, ours):
        self.register(ALIAS_PREFIX + name, ours)
        KEPT_HOST_NAMES.append(name)
        if not _HostFirst.importing:  # the names found while importing are printed together
            print("fairclip.plugin: '{}' is the host's; ours is registered as '{}{}'".format(name, ALIAS_PREFIX, name))


def _install():
    _check_backend()
    hooks = []
    for registry in (toolbox.TRAINER_REGISTRY, toolbox.DATASET_REGISTRY):
        if not isinstance(registry.__dict__.get("_do_register"), _HostFirst):
            registry._do_register = _HostFirst(registry)  # an instance attribute: shadows the class's method
        hooks.append(registry._do_register)
    _HostFirst.importing = True
    try:
        from fairclip import datasets, trainers  # noqa: F401  (importing registers every module)
    finally:
        _HostFirst.importing = False
    for hook in hooks:  # also ours registered before this import (fairclip.datasets imported earlier)
        for name, obj in hook.registry._obj_map.items():
            if getattr(obj, "__module__", "").startswith("fairclip.") and not name.startswith(ALIAS_PREFIX):
                hook.ours.setdefault(name, obj)
    if KEPT_HOST_NAMES:
        print("fairclip.plugin: the host's {} kept their names; ours are registered as {}<name>".format(
            ", ".join(KEPT_HOST_NAMES), ALIAS_PREFIX))
    default = toolbox.CFG_DEFAULT
    if "FAIR" not in default.TRAINER:
        extend_cfg(default)
    as_run_config(default)


_install()
