"""``fairclip``: the importable name of this toolbox.

The repository keeps a flat, CoOp-style layout (``trainers/``, ``datasets/``, ``toolbox/``,
``clip_backbone/``, ``tools/`` at the top), but every module imports them as ``fairclip.trainers``,
``fairclip.datasets``, ... so that the toolbox can live inside another CoOp-family checkout, which has
top-level ``trainers`` and ``datasets`` packages of its own, without either shadowing the other.

* Installed (``pip install -e .`` or ``pip install .``): ``pyproject.toml`` maps each subpackage to its
  top-level folder.
* Run from a checkout without installing (``python train.py``, ``python -m tools.X``, pytest): the
  repository root is added to this package's search path below, which gives the same mapping.

``import fairclip.plugin`` registers our trainers, readers and config keys in a host's Dassl.
"""
import os as _os

__version__ = "0.3.0"

_REPO_ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
# a checkout (pyproject.toml beside the folders), never site-packages holding some other `trainers` package
if (_os.path.isfile(_os.path.join(_REPO_ROOT, "pyproject.toml"))
        and _os.path.isfile(_os.path.join(_REPO_ROOT, "trainers", "__init__.py")) and _REPO_ROOT not in __path__):
    __path__.append(_REPO_ROOT)
