"""Load OpenAI CLIP by name (downloaded to the usual cache) or from a local file.

A local file may be a TorchScript archive (what OpenAI publishes) or a plain state dict (what
``torch.save(model.state_dict())`` writes, optionally wrapped as ``{"state_dict": ...}``). ``clip.load``
cannot read a state-dict file on modern torch (``torch.load`` of an open JIT-probed handle), so we read
the weights ourselves and call ``clip.model.build_model``. The model is returned in fp32, in eval mode,
with every parameter frozen; trainers unfreeze what they train.
"""
import hashlib
import os
import os.path as osp
import warnings

import torch

from fairclip.toolbox.errors import UserError

with warnings.catch_warnings():
    # openai-clip imports pkg_resources, which setuptools deprecates with a warning on every import; that
    # one warning is silenced here, where we import clip, and nothing else is.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    import clip
    from clip.clip import _MODELS, _download
    from clip.model import build_model

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


def weights_fingerprint(state_dict):
    """A short content hash of a CLIP state dict (keys the text-feature cache)."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        h.update(key.encode())
        h.update(str(tuple(state_dict[key].shape)).encode())
    for key in ("text_projection", "positional_embedding", "ln_final.weight", "visual.proj",
                "visual.attnpool.c_proj.weight"):
        if key in state_dict:
            h.update(state_dict[key].detach().float().cpu().numpy().tobytes())
    emb = state_dict.get("token_embedding.weight")
    if emb is not None:
        h.update(emb[:64].detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def load_clip(name="", path="", device="cpu", download_root=""):
    """Build CLIP in fp32 (eval mode, all parameters frozen).

    Returns ``(model, info)``; ``info`` has ``source`` (name or file), ``file`` and ``fingerprint``.
    """
    weights_file = resolve_weights_file(name=name, path=path, download_root=download_root)
    state_dict = _read_state_dict(weights_file)
    fingerprint = weights_fingerprint(state_dict)
    try:
        model = build_model(dict(state_dict))
    except (KeyError, RuntimeError) as exc:
        raise UserError("CLIP weights file {} has an unexpected layout ({}: {}); use an OpenAI CLIP checkpoint".format(
            weights_file, type(exc).__name__, str(exc).splitlines()[0][:200])) from exc
    model = model.float().to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    info = {"source": path or name, "file": weights_file, "fingerprint": fingerprint,
            "input_resolution": int(model.visual.input_resolution)}
    return model, info


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
