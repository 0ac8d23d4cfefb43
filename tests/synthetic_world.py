"""Build (once) and cache the synthetic world and its pretrained tiny CLIP, for tests and demos.

    from tests.synthetic_world import build_synthetic_world
    world = build_synthetic_world()          # {"root": DATA, "clip_path": .../tiny_clip.pt}

``root`` is a data root holding ``synthetic_fg/`` (pass it as ``--root`` / ``DATASET.ROOT``) and
``clip_path`` a state dict that ``clip.model.build_model`` (and the project's loader) reads.

The cache lives in ``$FAIRCLIP_TEST_CACHE`` or ``~/.cache/fairclip-tests/``, one folder per key; the key
hashes the source of the two tools and the arguments, so editing either tool rebuilds. A world is built
in a temporary folder and renamed into place when complete, so a folder under its final name is always
whole, and two processes that build at once both end up using the same one.
"""
import hashlib
import json
import os
import os.path as osp
import shutil
import tempfile

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL_FILES = ("tools/make_synthetic.py", "tools/pretrain_tiny_clip.py")


def default_cache_dir():
    return os.environ.get("FAIRCLIP_TEST_CACHE") or osp.join(osp.expanduser("~"), ".cache", "fairclip-tests")


def world_key(generate_args, pretrain_args):
    h = hashlib.sha256()
    for rel in TOOL_FILES:
        with open(osp.join(REPO, rel), "rb") as f:
            h.update(f.read())
    h.update(json.dumps([generate_args, pretrain_args], sort_keys=True).encode())
    return h.hexdigest()[:16]


def _paths(folder):
    return {"root": osp.join(folder, "data"), "clip_path": osp.join(folder, "tiny_clip.pt")}


def build_synthetic_world(cache_dir=None, generate_args=None, pretrain_args=None, log=None):
    """Return ``{"root", "clip_path"}`` of the cached world, building it first if needed.

    ``generate_args`` / ``pretrain_args`` override keyword arguments of ``tools.make_synthetic.generate``
    and ``tools.pretrain_tiny_clip.pretrain`` (defaults: the tools' own defaults, 80-95 s on 2 cores).
    """
    from fairclip.tools import make_synthetic, pretrain_tiny_clip

    generate_args = dict(make_synthetic.DEFAULTS, **(generate_args or {}))
    pretrain_args = dict(pretrain_tiny_clip.DEFAULTS, **(pretrain_args or {}))
    cache_dir = cache_dir or default_cache_dir()
    final = osp.join(cache_dir, "synthetic-" + world_key(generate_args, pretrain_args))
    if osp.isdir(final):
        return _paths(final)

    os.makedirs(cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".building-" + osp.basename(final) + "-", dir=cache_dir)
    try:
        paths = _paths(tmp)
        make_synthetic.generate(paths["root"], **generate_args)
        pretrain_tiny_clip.pretrain(paths["root"], paths["clip_path"], log=log or (lambda *a: None), **pretrain_args)
        try:
            os.rename(tmp, final)
        except OSError:
            if not osp.isdir(final):  # not the "someone else finished first" case
                raise
    finally:
        if osp.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return _paths(final)
