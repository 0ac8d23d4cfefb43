"""Use this toolbox inside a CoOp-family checkout (CoOp, CoCoOp, UPL, LaFTer, MaPLe, PromptSRC, ...).

After ``pip install -e /path/to/this/repo``, add one line to the host's ``train.py``, after its own
trainer and dataset imports::

    import fairclip.plugin  # noqa: F401  (FAIR-CLIP's trainers, readers and config keys)

Importing it

* registers our trainers (FAIR, MUST, DPA, ...) and dataset readers in the host's registries (real Dassl
  when it is installed, else our built-in mirror). A name the host has already registered (CoOp's own
  ``ZeroshotCLIP``, its ``OxfordPets`` reader, ...) stays the host's, so the host's runs do not change;
  the names kept are printed once;
* adds our config keys (``TRAINER.FAIR``, ``MODEL.BACKBONE.PATH``, ``DATASET.TEMPLATES``, ...) to the
  default config that the host's ``get_cfg_default()`` clones, so no call in ``setup_cfg`` is needed;
* makes that config find per-dataset overrides on its own: merging
  ``configs/trainers/FAIR/vit_b32.yaml`` after the dataset config also merges
  ``configs/trainers/FAIR/per_dataset/<dataset>.yaml`` when it exists (the host's CLI needs no new flag),
  and ``RUN.CONFIG_FILES`` (recorded in results.json) lists every file merged.

Import the plugin after the host's own registrations: Dassl refuses a name registered twice, so a host
reader imported after ours with the same name would fail.
"""
import contextlib

from fairclip import toolbox
from fairclip.config import as_run_config, extend_cfg


@contextlib.contextmanager
def _keep_host_names(registries):
    """While the block runs, registering a name that a registry already holds is skipped (and listed)
    instead of raising. Wraps Dassl's ``Registry._do_register``, which our mirror shares."""
    kept = []
    for registry in registries:
        host_names = set(registry.registered_names())
        register = registry._do_register

        def skip_host_names(name, obj, force=False, _register=register, _host=host_names, _registry=registry):
            if name in _host:
                kept.append(name)
                return
            _register(name, obj, force=force)

        registry._do_register = skip_host_names  # an instance attribute, removed below
    try:
        yield kept
    finally:
        for registry in registries:
            registry.__dict__.pop("_do_register", None)


def _extend_defaults():
    default = toolbox.CFG_DEFAULT
    if "FAIR" not in default.TRAINER:
        extend_cfg(default)
    as_run_config(default)


with _keep_host_names([toolbox.TRAINER_REGISTRY, toolbox.DATASET_REGISTRY]) as KEPT_HOST_NAMES:
    from fairclip import datasets, trainers  # noqa: F401,E402  (importing registers every module)

_extend_defaults()
if KEPT_HOST_NAMES:
    print("fairclip.plugin: kept the host's {} (ours are not registered under those names)".format(
        ", ".join(sorted(set(KEPT_HOST_NAMES)))))
