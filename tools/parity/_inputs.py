"""Inputs shared by the zero-shot, CuPL, WCA and UPL parity scripts: the world, our trainer, the reference's
CLIP on the same weights, and small shims for running the reference's code in this process.

* The world: ``--data``/``--dataset``/``--clip`` (default: the synthetic world and its tiny CLIP, built
  once and cached by ``tests/synthetic_world.py``).
* Our side: the trainer built exactly as ``train.py`` builds it (method config, per-dataset override, the
  command line), with the text-feature cache in a fresh folder so no earlier run can answer for it.
* Their side: the reference's own ``clip.model.build_model`` on the same state dict, in fp32.
"""
import ast
import contextlib
import os
import os.path as osp
import tempfile

import torch

from fairclip.toolbox.errors import UserError
from fairclip.tools.parity._common import restore_modules  # noqa: F401  (the scripts call _inputs.restore_modules)

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

# Trainer name -> its config folder under configs/trainers/.
CONFIG_DIRS = {"ZeroshotCLIP": "ZeroshotCLIP", "CuPL": "CuPL", "WCA": "WCA", "UPL": "UPL"}


def add_world_args(parser, images=32):
    parser.add_argument("--data", default="", help="dataset root (default: the synthetic world, built once and "
                        "cached by tests/synthetic_world.py, about 1.5 minutes the first time)")
    parser.add_argument("--dataset", default="synthetic", help="dataset key, e.g. synthetic, dtd (default synthetic)")
    parser.add_argument("--clip", default="", help="CLIP weights file (default: the synthetic world's tiny CLIP)")
    parser.add_argument("--images", type=int, default=images,
                        help="test images compared (default {}; 0 = the whole test split)".format(images))
    parser.add_argument("--opts", nargs="*", default=[],
                        help="KEY VALUE overrides for our trainer's config (after the method config)")
    return parser


def resolve_world(args):
    """Fill ``args.data``/``args.clip`` (building the synthetic world when neither is given)."""
    if not args.data:
        if args.dataset != "synthetic":
            raise UserError("--dataset {}: pass --data with that dataset's root (only the synthetic world is "
                            "built on demand)".format(args.dataset))
        from tests.synthetic_world import build_synthetic_world

        world = build_synthetic_world()
        args.data, args.clip = world["root"], args.clip or world["clip_path"]
    if not args.clip or not osp.isfile(args.clip):
        raise UserError("--clip {!r}: no such file; pass the CLIP weights the run should use".format(args.clip))
    if args.images < 0:
        raise UserError("--images {} must be 0 (all) or positive".format(args.images))
    return args


def build_our_trainer(trainer, args, workdir, *opts):
    """Our ``trainer`` on ``args``' world, as ``train.py`` builds it, seeded with ``args.seed``."""
    from fairclip.toolbox import build_trainer, set_random_seed

    from train import build_parser, setup_cfg

    cfg_dir = osp.join(REPO, "configs", "trainers", CONFIG_DIRS[trainer])
    dataset_cfg = osp.join(REPO, "configs", "datasets", args.dataset + ".yaml")
    if not osp.isfile(dataset_cfg):
        raise UserError("--dataset {}: {} does not exist".format(args.dataset, dataset_cfg))
    argv = ["--root", args.data, "--trainer", trainer, "--seed", str(max(args.seed, 0)),
            "--output-dir", osp.join(workdir, "ours"), "--dataset-config-file", dataset_cfg,
            "--config-file", osp.join(cfg_dir, "vit_b32.yaml"),
            "MODEL.BACKBONE.PATH", args.clip, "MODEL.TEXT_CACHE_DIR", osp.join(workdir, "text_cache"),
            "DATALOADER.NUM_WORKERS", "0", "VERBOSE", "False"]
    with quiet():
        # The user's --opts first: the overrides a comparison itself needs (``opts``) have the last word.
        cfg = setup_cfg(build_parser().parse_args(argv + [str(o) for o in args.opts] + [str(o) for o in opts]))
        set_random_seed(cfg.SEED)
        return build_trainer(cfg)


def describe_inputs(trainer, args, what):
    """One line naming what was compared: the dataset, how many images of which split, the weights."""
    print("inputs: {} of {} ({} classes, root {}), CLIP weights {}".format(
        what, trainer.cfg.DATASET.NAME, len(trainer.classnames), args.data, args.clip))


def test_items(trainer, n):
    """The first ``n`` test items (all when ``n`` is 0), in split order."""
    items = list(trainer.dm.dataset.test)
    return items[:n] if n else items


def load_images(items, transform):
    """``[N, 3, H, W]`` of ``transform`` applied to each item's image file (read as RGB)."""
    from PIL import Image

    out = []
    for item in items:
        with Image.open(item.impath) as img:
            out.append(transform(img.convert("RGB")))
    return torch.stack(out)


def state_dict_of(path):
    """The CLIP state dict in ``path`` (TorchScript archive or state dict), as our loader reads it."""
    from fairclip.clip_backbone.loading import _read_state_dict

    return _read_state_dict(path)


def reference_clip_model(state_dict):
    """The reference's own CLIP on ``state_dict`` (fp32, eval mode): ``clip.model.build_model`` as imported
    now, i.e. inside ``reference_on_path`` the checkout's own ``clip`` folder when it has one."""
    import importlib

    model = importlib.import_module("clip.model").build_model(dict(state_dict))
    return model.float().eval()


@contextlib.contextmanager
def on_path(paths):
    """Put extra folders (e.g. a Dassl checkout) first on ``sys.path`` for the block."""
    import sys

    paths = [osp.abspath(p) for p in paths if p]
    for p in reversed(paths):
        sys.path.insert(0, p)
    try:
        yield
    finally:
        for p in paths:
            sys.path.remove(p)


@contextlib.contextmanager
def quiet():
    """Silence stdout and stderr for the block (the references print their prompts and progress bars;
    errors still arrive as exceptions)."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        yield


@contextlib.contextmanager
def patched(*triples):
    """Set ``setattr(obj, name, value)`` for each ``(obj, name, value)`` for the block, then restore."""
    missing = object()
    saved = []
    try:
        for obj, name, value in triples:
            saved.append((obj, name, getattr(obj, name, missing)))
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, old in reversed(saved):
            if old is missing:
                delattr(obj, name)
            else:
                setattr(obj, name, old)


@contextlib.contextmanager
def cuda_calls_stay_on_cpu():
    """Shim for reference scripts that call ``.cuda()`` unconditionally: on a machine without CUDA, the
    tensor (or module) stays where it is for the block."""
    if torch.cuda.is_available():
        yield
        return
    with patched((torch.Tensor, "cuda", lambda self, *a, **k: self),
                 (torch.nn.Module, "cuda", lambda self, *a, **k: self)):
        yield


def load_functions(path, names, namespace, what="the reference's script"):
    """Compile only the top-level functions and classes ``names`` of the script at ``path`` into
    ``namespace`` and return them (for scripts whose module body parses the command line, loads models
    and datasets when imported); ``what`` names the script in the error when one is missing."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    found = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names]
    absent = sorted(set(names) - {node.name for node in found})
    if absent:
        raise UserError("{}: {} not found; is this {}?".format(path, ", ".join(absent), what))
    exec(compile(ast.Module(body=found, type_ignores=[]), path, "exec"), namespace)  # the reference's own code
    return [namespace[n] for n in names]


def round_tol(x):
    """``x`` to two significant digits (a tolerance scaled by a logit scale or a gradient's size)."""
    return float("{:.2g}".format(x))


def norm_params(model, visual=True):
    """``{name: parameter}`` of CLIP's image-tower norms (LayerNorm/BatchNorm) or, with ``visual`` False,
    its text LayerNorms."""
    if visual:
        mods = [(n, m) for n, m in model.visual.named_modules()
                if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d))]
    else:
        mods = [(n, m) for n, m in model.transformer.named_modules() if isinstance(m, torch.nn.LayerNorm)]
        mods.append(("ln_final", model.ln_final))
    return {"{}.{}".format(n, pn): p for n, m in mods for pn, p in m.named_parameters()}


def stacked(params, what):
    """The gradients (``what`` "grad") or values of ``params`` ({name: parameter}), in name order, as one vector."""
    return torch.cat([(p.grad if what == "grad" else p).detach().reshape(-1) for _, p in sorted(params.items())])


def compare_step(report, name, mine, theirs, atol):
    """Two rows for a parameter set ({name: parameter}) after one training step on both sides: the gradients
    divided by the reference's largest (relative to the gradient's size, whatever it is) and the values."""
    grad_ref = stacked(theirs, "grad")
    scale = grad_ref.abs().max().clamp_min(1e-30)
    report.tensors("gradient / max |g|, " + name, stacked(mine, "grad") / scale, grad_ref / scale, 1e-4)
    report.tensors("after the step, " + name, stacked(mine, "value"), stacked(theirs, "value"), atol)


def workdir():
    """A temporary folder for one parity run (our output folder, text cache, the reference's files)."""
    return tempfile.TemporaryDirectory(prefix="fairclip-parity-")


def compare_sets(report, name, ours, ref):
    """A row for two sets (e.g. of (image, pseudo-label) pairs): the size of their symmetric difference,
    which must be 0."""
    ours, ref = set(ours), set(ref)
    diff = len(ours ^ ref)
    report.rows.append((name, "|A xor B|", "{} (of {} / {})".format(diff, len(ours), len(ref)), 0, diff == 0))
