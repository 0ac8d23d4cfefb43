"""Load OpenAI CLIP by name (downloaded to the usual cache) or from a local file.

A local file may be a TorchScript archive (what OpenAI publishes) or a plain state dict (what
``torch.save(model.state_dict())`` writes, optionally wrapped as ``{"state_dict": ...}``). ``clip.load``
cannot read a state-dict file on modern torch (``torch.load`` of an open JIT-probed handle), so we read
the weights ourselves and call ``clip.model.build_model``, which builds either image tower from its
state dict: a ViT (``visual.proj``; patch size and resolution from ``visual.conv1`` and the positional
embedding) or a ModifiedResNet (RN50, RN101, RN50x4...: layer counts from ``visual.layer<k>.*``, resolution
from the attention pool's positional embedding). The model is returned in fp32, in eval mode, with every
parameter frozen; trainers unfreeze what they train. A ResNet's BatchNorm layers keep their pretrained
running statistics for good (``FrozenStatsBatchNorm2d``): no trainer of this toolbox updates them.

``clip`` here is always OpenAI's package (pip's ``openai-clip``): CoOp-family checkouts ship a top-level
``clip`` package of their own (CoOp's copy; MaPLe's and PromptSRC's change ``build_model``), which would
shadow it when this toolbox runs inside them (``fairclip.plugin``), so the installed distribution's files
are loaded under a private module name.
"""
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import os.path as osp
import sys
import warnings

import torch
import torch.nn as nn

from fairclip.toolbox.errors import UserError
from fairclip.toolbox.io import atomic_write_json

_PRIVATE_CLIP = "fairclip_openai_clip"


def _import_openai_clip():
    """OpenAI's ``clip`` package, from the installed distribution's files whatever ``sys.path`` holds."""
    if _PRIVATE_CLIP in sys.modules:
        return sys.modules[_PRIVATE_CLIP]
    for dist_name in ("openai-clip", "clip"):  # PyPI's name, and the name of a git install of openai/CLIP
        try:
            init = str(importlib.metadata.distribution(dist_name).locate_file(osp.join("clip", "__init__.py")))
        except importlib.metadata.PackageNotFoundError:
            continue
        if osp.isfile(init):
            spec = importlib.util.spec_from_file_location(_PRIVATE_CLIP, init,
                                                          submodule_search_locations=[osp.dirname(init)])
            module = importlib.util.module_from_spec(spec)
            sys.modules[_PRIVATE_CLIP] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[_PRIVATE_CLIP]
                raise
            return module
    return importlib.import_module("clip")  # not installed as a distribution: whatever `clip` is


with warnings.catch_warnings():
    # openai-clip imports pkg_resources, which setuptools deprecates with a warning on every import; that
    # one warning is silenced here, where we import clip, and nothing else is.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    clip = _import_openai_clip()
    _MODELS, _download = clip.clip._MODELS, clip.clip._download
    build_model = clip.model.build_model

DEFAULT_DOWNLOAD_ROOT = osp.expanduser("~/.cache/clip")


def available_models():
    return list(_MODELS.keys())


def _read_state_dict(path):
    """Return the CLIP state dict stored in ``path`` (JIT archive or state dict)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load is deprecated; OpenAI ships TorchScript
            archive = torch.jit.load(path, map_location="cpu")
        return archive.state_dict()
    except (RuntimeError, ValueError):
        pass  # not a TorchScript archive: try a pickled state dict
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(
            "CLIP weights file {} is neither a TorchScript archive nor a state dict ({}); re-download it "
            "or point MODEL.BACKBONE.PATH at a valid file".format(path, type(exc).__name__)
        ) from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or "visual.conv1.weight" not in obj and "visual.layer1.0.conv1.weight" not in obj:
        raise UserError(
            "file {} does not hold CLIP weights (no 'visual.*' keys); point MODEL.BACKBONE.PATH at an OpenAI "
            "CLIP checkpoint".format(path)
        )
    # A saved module may carry a DataParallel/DDP 'module.' prefix.
    return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}


class FrozenStatsBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that always normalises with its running statistics and never updates them, even inside
    a model put in train mode; its affine weight and bias can still be trained. (CLIP's ResNets were
    pretrained with batches of thousands; a self-training batch of 64 target images would overwrite the
    statistics with noisier ones, and the result would depend on the batch size.)"""

    def train(self, mode=True):
        return super().train(False)


def freeze_batchnorm_statistics(module):
    """Make every BatchNorm2d under ``module`` a ``FrozenStatsBatchNorm2d`` in place (same parameters,
    buffers and state-dict keys); returns how many there are."""
    count = 0
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            if not isinstance(m, FrozenStatsBatchNorm2d):
                m.__class__ = FrozenStatsBatchNorm2d
            m.train(False)
            count += 1
    return count


def resolve_weights_file(name="", path="", download_root=""):
    """Return the local file for a CLIP given by ``path`` or by ``name`` (downloading it if needed)."""
    if path:
        path = osp.abspath(osp.expanduser(path))
        if not osp.isfile(path):
            raise UserError("MODEL.BACKBONE.PATH={} does not exist; set it to a local CLIP weights file".format(path))
        return path
    if not name:
        raise UserError("no CLIP backbone given: set MODEL.BACKBONE.NAME (e.g. ViT-B/32) or MODEL.BACKBONE.PATH")
    if name not in _MODELS:
        raise UserError("MODEL.BACKBONE.NAME={!r} is not an OpenAI CLIP model; choose one of {} or set "
                        "MODEL.BACKBONE.PATH to a local file".format(name, available_models()))
    root = osp.abspath(osp.expanduser(download_root or DEFAULT_DOWNLOAD_ROOT))
    url = _MODELS[name]
    target = osp.join(root, osp.basename(url))
    try:
        return _download(url, root)
    except Exception as exc:  # URLError, socket errors, checksum mismatch after a failed download
        raise UserError(
            "cannot download CLIP {} ({}: {}); with no network, copy the file {} from {} to {} "
            "or set MODEL.BACKBONE.PATH to a local copy".format(
                name, type(exc).__name__, exc, osp.basename(url), url, target)
        ) from exc


FINGERPRINT_FILE = "weights_fingerprints.json"  # in default_cache_dir(): {file: {size, mtime_ns, fingerprint}}
FINGERPRINT_VERSION = 2  # 2: every tensor; 1 (before): key shapes, five tensors and 64 embedding rows
# Entries of OpenAI's archives that are not weights (clip.model.build_model drops them and derives the
# architecture from the weight shapes): left out, so an archive and its state-dict copy agree.
METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")


def weights_fingerprint(state_dict):
    """A content hash of a whole CLIP state dict: SHA-256 over every weight's name, shape and values (as
    float32 for floating-point tensors, so an fp16 archive and its fp32 copy, which build the same fp32
    model, agree). It keys the text-feature cache and is what results.json records."""
    h = hashlib.sha256("clip-weights-v{}".format(FINGERPRINT_VERSION).encode())
    for key in sorted(state_dict):
        if key in METADATA_KEYS:
            continue
        value = state_dict[key]
        if not torch.is_tensor(value):
            value = torch.as_tensor(value)
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        array = value.contiguous().numpy()
        h.update("\0{}\0{}\0{}\0".format(key, array.dtype.str, tuple(array.shape)).encode())
        h.update(memoryview(array.reshape(-1)).cast("B") if array.size else b"")
    return h.hexdigest()[:32]


def _file_identity(path):
    st = os.stat(path)
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def _read_fingerprints(index_path):
    try:
        with open(index_path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) and data.get("version") == FINGERPRINT_VERSION else {}
    except (OSError, ValueError):
        return {}  # absent or damaged: fingerprints are recomputed and the file rewritten


def file_fingerprint(path, state_dict):
    """``weights_fingerprint(state_dict)`` of the weights read from ``path``, hashed once per file: the
    result is kept in ``<default_cache_dir()>/weights_fingerprints.json`` under the file's absolute path,
    size and modification time, and reused while all three match."""
    path = osp.abspath(path)
    index_path = osp.join(default_cache_dir(), FINGERPRINT_FILE)
    ident = _file_identity(path)
    entries = _read_fingerprints(index_path).get("files", {})
    known = entries.get(path)
    if isinstance(known, dict) and {k: known.get(k) for k in ident} == ident and isinstance(
            known.get("fingerprint"), str):
        return known["fingerprint"]
    fingerprint = weights_fingerprint(state_dict)
    entries = dict(_read_fingerprints(index_path).get("files", {}))  # re-read: another run may have added one
    entries[path] = dict(ident, fingerprint=fingerprint)
    try:
        atomic_write_json({"version": FINGERPRINT_VERSION, "files": entries}, index_path, indent=1)
    except OSError as exc:
        warnings.warn("could not save the CLIP weights fingerprint to {} ({}); it is recomputed on every run".format(
            index_path, exc))
    return fingerprint


def load_clip(name="", path="", device="cpu", download_root=""):
    """Build CLIP in fp32 (eval mode, all parameters frozen).

    Returns ``(model, info)``; ``info`` has ``source`` (name or file), ``file``, ``fingerprint`` (a hash of
    every weight, see :func:`weights_fingerprint`) and ``input_resolution``.
    """
    weights_file = resolve_weights_file(name=name, path=path, download_root=download_root)
    state_dict = _read_state_dict(weights_file)
    fingerprint = file_fingerprint(weights_file, state_dict)
    try:
        model = build_model(dict(state_dict))
    except (KeyError, RuntimeError) as exc:
        raise UserError("CLIP weights file {} has an unexpected layout ({}: {}); use an OpenAI CLIP checkpoint".format(
            weights_file, type(exc).__name__, str(exc).splitlines()[0][:200])) from exc
    model = model.float().to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    freeze_batchnorm_statistics(model)  # ResNet towers only (a ViT has no BatchNorm)
    info = {"source": path or name, "file": weights_file, "fingerprint": fingerprint,
            "input_resolution": int(model.visual.input_resolution), "architecture": visual_architecture(model)}
    return model, info


def visual_architecture(clip_model):
    """"vit" or "resnet": the kind of CLIP image tower (``VisionTransformer`` or ``ModifiedResNet``)."""
    return "vit" if hasattr(clip_model.visual, "transformer") else "resnet"


def load_clip_from_cfg(cfg, device="cpu"):
    """``load_clip`` driven by ``MODEL.BACKBONE.{NAME,PATH,DOWNLOAD_ROOT}``; checks ``INPUT.SIZE``."""
    model, info = load_clip(
        name=cfg.MODEL.BACKBONE.NAME, path=cfg.MODEL.BACKBONE.PATH, device=device,
        download_root=cfg.MODEL.BACKBONE.DOWNLOAD_ROOT,
    )
    size = tuple(cfg.INPUT.SIZE)
    res = info["input_resolution"]
    if size != (res, res):
        raise UserError("INPUT.SIZE={} does not match the CLIP input resolution {} of {}; set INPUT.SIZE "
                        "({}, {})".format(size, res, info["source"], res, res))
    return model, info


def default_cache_dir():
    return os.environ.get("FAIRCLIP_CACHE") or osp.expanduser("~/.cache/fairclip")
