"""Shared parts of the MUST and DPA parity scripts (self-training on CLIP's image tower).

Both references are research code written for torch 1.x, timm 0.4 and a CUDA machine. What lets them run
beside ours lives here, never in the checkout:

* ``legacy_imports``: stub modules for imports the compared computation never calls (``timm``,
  ``tensorboardX``, ``torch._six``; matplotlib/sklearn where absent) and the private torch names an old
  ``clip/model.py`` imports but never uses. A stub's attributes raise if anything calls them, so a stub
  can never stand in for compared code;
* ``cpu_synchronize``: ``torch.cuda.synchronize`` is a no-op on a machine without CUDA (the references
  call it once per step for timing);
* ``quiet``: the references' progress prints go to a buffer, shown only when they fail.

Our side is the real trainer (``build_trainer`` on a dataset config, the method config and its per-dataset
override), fed fixed views: the centre view of a few train images (weak) and its mirror image (strong),
the same tensors on both sides, so no augmentation randomness enters the comparison.
``StepRecorder`` reads gradients, learning rates and parameters around each optimiser step through
torch's optimizer hooks, identically for both sides.
"""
import argparse
import contextlib
import importlib.abc
import importlib.machinery
import io
import math
import os.path as osp
import sys
import tempfile
import types

import torch

from fairclip.toolbox.errors import UserError
from fairclip.tools.parity._common import restore_modules as restored_modules

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


# ---------------------------------------------------------------------------- running old reference code
class _StubModule(types.ModuleType):
    """A module whose every attribute is a placeholder that raises when called or instantiated."""

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)

        def unavailable(*args, **kwargs):
            raise RuntimeError("{}.{} is a parity stub (not part of the compared computation)".format(
                self.__name__, attr))

        unavailable.__name__ = attr
        return unavailable


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers imports of ``names`` (and their submodules) with stub modules; ``attrs`` pre-sets values."""

    def __init__(self, names, attrs):
        self.names, self.attrs = tuple(names), attrs

    def covers(self, fullname):
        return any(fullname == n or fullname.startswith(n + ".") for n in self.names)

    def find_spec(self, fullname, path=None, target=None):
        if self.covers(fullname):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        module.__dict__.update(self.attrs.get(spec.name, {}))
        return module

    def exec_module(self, module):
        pass


def _importable(name):
    """Whether ``name`` can be found (without importing it: sklearn alone takes seconds)."""
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@contextlib.contextmanager
def legacy_imports(always=("timm", "tensorboardX", "torch._six"), if_missing=("matplotlib", "sklearn"),
                   attrs=None):
    """Stub ``always`` (whatever is installed: a newer timm lacks names the old code imports) and the
    modules of ``if_missing`` that cannot be imported; give ``torch.nn.functional`` the private names the
    old ``clip/model.py`` files import (``_scaled_dot_product_attention``, unused by the compared path).
    Everything is undone on exit; modules imported meanwhile keep their references to the stubs."""
    names = list(always) + [n for n in if_missing if not _importable(n)]
    stub_attrs = {"torch._six": {"inf": math.inf}}
    stub_attrs.update(attrs or {})
    finder = _StubFinder(names, stub_attrs)
    saved = {n: m for n, m in sys.modules.items() if finder.covers(n)}
    for n in saved:
        del sys.modules[n]
    F = torch.nn.functional
    added = []
    for name in ("_scaled_dot_product_attention", "_in_projection_packed", "_in_projection"):
        if not hasattr(F, name):
            setattr(F, name, _StubModule("torch.nn.functional").__getattr__(name))
            added.append(name)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for n in [n for n in sys.modules if finder.covers(n)]:
            del sys.modules[n]
        sys.modules.update(saved)
        for name in added:
            delattr(F, name)


@contextlib.contextmanager
def cpu_synchronize():
    """Without CUDA, ``torch.cuda.synchronize`` (called by the references after every step) does nothing."""
    if torch.cuda.is_available():
        yield
        return
    original = torch.cuda.synchronize
    torch.cuda.synchronize = lambda *a, **k: None
    try:
        yield
    finally:
        torch.cuda.synchronize = original


@contextlib.contextmanager
def quiet(what):
    """Capture stdout/stderr of the block; on an exception, print what was captured and name ``what``."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield buf
    except BaseException:  # SystemExit too: the references sys.exit(1) on a non-finite loss
        sys.stderr.write("--- output of {} ---\n{}\n---\n".format(what, buf.getvalue()[-4000:]))
        raise


@contextlib.contextmanager
def attribute(obj, name, value):
    """Set ``obj.name = value`` for the block (used to observe reference functions, never to change them)."""
    original = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, original)


def recording(fn, calls):
    """``fn`` unchanged, with each call's ``(args, kwargs, result)`` appended to ``calls``."""

    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        calls.append((args, kwargs, out))
        return out

    return wrapper


# ---------------------------------------------------------------------------- the command line
def add_world_arguments(parser, default_batch=8, default_steps=2):
    parser.add_argument("--root", default="",
                        help="data root holding the dataset (default: the synthetic world of tests/synthetic_world.py, "
                             "built and cached on first use, about 1.5 minutes on 2 cores)")
    parser.add_argument("--clip", default="",
                        help="CLIP state dict (default: the synthetic world's tiny CLIP); 'early': the same CLIP after "
                             "only 60 pretraining steps (made once, cached beside the world), whose softer predictions "
                             "exercise what the final CLIP's near one-hot ones leave trivial (DPA's weights, heads "
                             "that disagree); 'random': a randomly initialised tiny CLIP (32 px input)")
    parser.add_argument("--dataset", default="synthetic",
                        help="dataset config key, configs/datasets/<key>.yaml (default: synthetic)")
    parser.add_argument("--batch-size", type=int, default=default_batch, help="images per step (default %(default)s)")
    parser.add_argument("--steps", type=int, default=default_steps,
                        help="optimisation steps compared (default %(default)s)")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="config KEY VALUE pairs for our trainer (the reference gets the same values)")
    return parser


EARLY_STEPS = 60  # --clip early: the world's tiny CLIP after 60 of its 2400 pretraining steps
RANDOM_CLIP = dict(resolution=32, patch=8, embed_dim=64, width=64, layers=2, text_layers=1)


def world_paths(args):
    """``(root, clip_path)``: the arguments, or the cached synthetic world; ``--clip random`` is a randomly
    initialised tiny CLIP (``tools/make_tiny_clip.py``, 32 px input, seeded by ``--seed``)."""
    if args.clip == "early":
        if args.root or args.dataset != "synthetic":
            raise UserError("--clip early is the default synthetic world's CLIP after {} pretraining steps; it "
                            "takes no --root or --dataset".format(EARLY_STEPS))
        root, final_clip = world_paths(argparse.Namespace(**dict(vars(args), clip="")))
        path = osp.join(osp.dirname(final_clip), "tiny_clip_{}steps.pt".format(EARLY_STEPS))
        if not osp.isfile(path):  # written atomically, so a finished file is whole
            from fairclip.tools.pretrain_tiny_clip import pretrain

            print("parity: pretraining the synthetic world's tiny CLIP for {} steps (once): {}".format(
                EARLY_STEPS, path))
            pretrain(root, path, steps=EARLY_STEPS, log=lambda *a: None)
        return root, path
    if args.clip == "random":
        from fairclip.tools.make_tiny_clip import save_tiny_clip

        path = save_tiny_clip(osp.join(tempfile.mkdtemp(prefix="parity-clip-"), "random_tiny_clip.pt"),
                              seed=args.seed, **RANDOM_CLIP)
        if args.root:
            return args.root, path
        return world_paths(argparse.Namespace(**dict(vars(args), clip="")))[0], path
    if args.root and args.clip:
        return args.root, args.clip
    if args.dataset != "synthetic" and not (args.root and args.clip):
        raise UserError("--dataset {}: give --root and --clip (only the synthetic world has defaults)".format(
            args.dataset))
    try:
        from tests.synthetic_world import build_synthetic_world
    except ImportError as exc:
        raise UserError("the default inputs need tests/synthetic_world.py: run from the repository root, or "
                        "give --root and --clip ({})".format(exc)) from exc
    world = build_synthetic_world()
    return args.root or world["root"], args.clip or world["clip_path"]


def fp16_exact_copy(clip_path, folder):
    """A copy of the CLIP state dict whose floating tensors hold fp16-representable values.

    OpenAI's ``build_model`` (our loader) rounds the linear and attention weights to fp16
    (``convert_weights``) while the MUST and DPA loaders keep whatever the file holds. The published
    checkpoints are fp16, so both agree on them; the tiny CLIPs here are saved in fp32, and rounding them
    once makes both sides load identical weights."""
    try:
        state = torch.load(clip_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError("--clip {}: not a CLIP state dict ({}); the parity scripts need a state dict (a TorchScript "
                        "archive cannot be read by the references' loaders as given)".format(clip_path, exc)) from exc
    if not isinstance(state, dict) or "visual.conv1.weight" not in state:
        raise UserError("--clip {}: not a CLIP state dict in OpenAI's key layout".format(clip_path))
    state = {k: v.half().float() if v.is_floating_point() else v for k, v in state.items()}
    out = osp.join(folder, "clip_fp16_values.pt")
    torch.save(state, out)
    return out


def build_ours(trainer_name, args, extra_opts=()):
    """Our trainer as scripts/<method>/main.sh builds it (method config + per-dataset override), with the
    parity's batch size, no workers and no per-epoch test, writing into a temporary folder."""
    from train import build_parser, setup_cfg
    from fairclip.toolbox import build_trainer, set_random_seed

    root, clip_path = world_paths(args)
    for path, what in ((root, "--root"), (clip_path, "--clip")):
        if not osp.exists(path):
            raise UserError("{} {}: no such file or folder".format(what, path))
    dataset_cfg = osp.join(REPO, "configs", "datasets", args.dataset + ".yaml")
    if not osp.isfile(dataset_cfg):
        raise UserError("--dataset {}: {} does not exist".format(args.dataset, dataset_cfg))
    out = tempfile.mkdtemp(prefix="parity-{}-".format(trainer_name.lower()))
    clip_path = fp16_exact_copy(clip_path, out)  # the reference reads it from cfg.MODEL.BACKBONE.PATH too
    argv = ["--root", root, "--trainer", trainer_name, "--seed", "1", "--output-dir", out,
            "--dataset-config-file", dataset_cfg,
            "--config-file", osp.join(REPO, "configs", "trainers", trainer_name, "vit_b32.yaml"),
            "MODEL.BACKBONE.PATH", clip_path, "DATALOADER.NUM_WORKERS", "0", "DATALOADER.GPU_VIEWS", "never",
            "DATALOADER.TRAIN_X.BATCH_SIZE", str(args.batch_size), "VERBOSE", "False",
            "TRAINER.{}.EVAL_EACH_EPOCH".format(trainer_name), "False"]
    if args.clip == "random":
        argv += ["INPUT.SIZE", "(32, 32)"]
    argv += [str(o) for o in extra_opts] + [str(o) for o in args.opts]
    cfg = setup_cfg(build_parser().parse_args(argv))
    set_random_seed(cfg.SEED)
    with quiet("building our {} trainer".format(trainer_name)):
        trainer = build_trainer(cfg)
    return trainer


def fixed_views(trainer, n_images, seed):
    """``(weak, strong, labels, indices)`` for ``n_images`` train images chosen with ``seed``: weak is the
    deterministic centre view (resize, centre crop, CLIP normalisation), strong its mirror image."""
    import torchvision.transforms as T
    from PIL import Image

    from fairclip.toolbox import INTERPOLATION_MODES

    cfg = trainer.cfg
    items = trainer.dm.dataset.train_x
    if n_images > len(items):
        raise UserError("--batch-size x --steps = {} images, but the train split has only {}".format(
            n_images, len(items)))
    gen = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(items), generator=gen)[:n_images].tolist()
    size = tuple(cfg.INPUT.SIZE)
    tfm = T.Compose([T.Resize(max(size), interpolation=INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]),
                     T.CenterCrop(size), T.ToTensor(), T.Normalize(cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)])
    weak = torch.stack([tfm(Image.open(items[i].impath).convert("RGB")) for i in indices])
    labels = torch.tensor([items[i].label for i in indices])
    return weak, weak.flip(-1).contiguous(), labels, torch.tensor(indices)


def split_batches(n_steps, batch_size, *tensors):
    """``[(t[s*B:(s+1)*B] for t in tensors) for s in steps]``."""
    return [tuple(t[s * batch_size:(s + 1) * batch_size] for t in tensors) for s in range(n_steps)]


def total_steps(trainer):
    """Iterations of the whole run (our per-iteration cosine's length; the reference's schedule length)."""
    return trainer.cfg.OPTIM.MAX_EPOCH * len(trainer.train_loader_x)


def reference_text_files(trainer, workdir):
    """``(dataset, template file, class-name file)``: our templates and class names as JSON files in the
    references' format (``{dataset: [...]}``), under the dataset key "parity"."""
    import json

    dataset = "parity"
    template_file, class_file = osp.join(workdir, "templates.json"), osp.join(workdir, "classes.json")
    with open(template_file, "w") as f:
        json.dump({dataset: list(trainer.templates())}, f)
    with open(class_file, "w") as f:
        json.dump({dataset: [n.replace("_", " ") for n in trainer.classnames]}, f)  # as our templates fill them
    return dataset, template_file, class_file


# ---------------------------------------------------------------------------- observing a training step
class StepRecorder:
    """Per optimiser step of ``optimizer``: the gradients and the learning rate of every named parameter
    before the update, and the parameters after it (torch's optimizer step hooks)."""

    def __init__(self, optimizer, named_params):
        self.named = [(n, p) for n, p in named_params if p.requires_grad]
        group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        self.group_of = {n: group_of[id(p)] for n, p in self.named if id(p) in group_of}
        self.grads, self.lrs, self.after = [], [], []
        self.handles = [optimizer.register_step_pre_hook(self._pre), optimizer.register_step_post_hook(self._post)]

    def _pre(self, optimizer, args, kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in self.named if p.grad is not None})
        self.lrs.append({n: float(g["lr"]) for n, g in self.group_of.items()})

    def _post(self, optimizer, args, kwargs):
        self.after.append({n: p.detach().clone() for n, p in self.named})

    def close(self):
        for h in self.handles:
            h.remove()

    def attach(self, steps):
        """Add each recorded step's ``grads``, ``lrs`` and ``after`` to the matching dict of ``steps``."""
        for rec, grads, lrs, after in zip(steps, self.grads, self.lrs, self.after):
            rec.update(grads=grads, lrs=lrs, after=after)


def ours_name(name):
    """The name in our model of a reference parameter: both references wrap CLIP as ``model`` (so
    ``model.visual.X``, ours ``clip.visual.X``) and keep the classifier in ``model.visual.classifier``
    (ours ``classifier``). Text-tower names (deleted by both references) map to None."""
    if name == "model.visual.classifier":
        return "classifier"
    if name.startswith("model.visual."):
        return "clip." + name[len("model."):]
    return None


def common_names(report, label, ours, ref):
    """The sorted names both dicts hold; a failing row first when the two sets differ."""
    if set(ours) != set(ref):
        only = sorted(set(ours) ^ set(ref))
        report.rows.append((label, "names", "{} vs {} ({}...)".format(len(ours), len(ref), only[:2]), "equal", False))
    return sorted(set(ours) & set(ref))


def map_names(tensors, rename, transpose=()):
    """``{rename(name): tensor}`` (entries whose new name is None dropped; names in ``transpose`` are
    transposed, e.g. a [D, K] classifier against our [K, D])."""
    out = {}
    for name, t in tensors.items():
        new = rename(name)
        if new is not None:
            out[new] = t.t() if new in transpose else t
    return out


def scaled(report, name, ours, ref, atol):
    """A row of ``max |ours - ref| / max(1, max |ref|)``: the absolute difference for quantities of order 1,
    relative to the largest entry for larger ones (gradients, logits at scale 100)."""
    ours, ref = torch.as_tensor(ours).detach().double().cpu(), torch.as_tensor(ref).detach().double().cpu()
    if report.shapes_differ(name, ours, ref):
        return
    if not ours.numel():
        report.rows.append((name, "|d|/max(1,|r|)", 0.0, atol, True))
        return
    diff = ((ours - ref).abs().max() / ref.abs().max().clamp_min(1.0)).item()
    report.rows.append((name, "|d|/max(1,|r|)", diff, atol, diff <= atol))


def noise_free(grads_a, grads_b, rtol=1e-3):
    """``{name: bool mask}`` of the entries whose gradient both sides resolve to ``rtol`` (relative).

    Adam turns a gradient into roughly ``lr * sign(g)`` on its first steps, so an entry whose true gradient
    is zero or tiny (e.g. the key part of an attention layer's ``in_proj_bias``: softmax ignores a shift
    shared by all keys) moves by up to +-lr on its rounding noise, differently on two implementations.
    Updated weights are compared on the entries whose gradients agree to ``rtol`` (the gradients themselves
    are compared in full, in their own rows); the row says how many entries were left out."""
    return {n: (grads_a[n] - grads_b[n]).abs() <= rtol * torch.maximum(grads_a[n].abs(), grads_b[n].abs())
            for n in grads_a if n in grads_b}


def compare_named(report, label, ours, ref, atol, groups, row=None, keep=None):
    """One row per group of parameter names (``groups``: [(title, predicate)]) over the group's tensors
    (``row``: a ParityReport-style function, default ``report.tensors``; ``keep``: {name: bool mask} of
    the entries compared, see ``noise_free``); a name present on one side only fails the row."""
    for title, wanted in groups:
        names = sorted(n for n in set(ours) | set(ref) if wanted(n))
        if not names:
            continue
        missing = [n for n in names if n not in ours or n not in ref]
        if missing:
            report.rows.append(("{} {}".format(label, title), "names", "missing {}".format(missing[:3]), "equal",
                                False))
            continue
        masks = [keep[n].reshape(-1) if keep is not None and n in keep
                 else torch.ones(ours[n].numel(), dtype=torch.bool) for n in names]
        skipped = sum(int((~m).sum()) for m in masks)
        name = "{} {}".format(label, title)
        if skipped:
            name += " ({} noise-level-grad entries left out)".format(skipped)
        (row or report.tensors)(name, torch.cat([ours[n].reshape(-1)[m] for n, m in zip(names, masks)]),
                                torch.cat([ref[n].reshape(-1)[m] for n, m in zip(names, masks)]), atol)


def relative(report, name, ours, ref, rtol):
    """A row of the max relative difference ``|ours - ref| / |ref|`` (for learning rates, which span
    several orders of magnitude)."""
    ours, ref = torch.as_tensor(ours, dtype=torch.float64), torch.as_tensor(ref, dtype=torch.float64)
    if report.shapes_differ(name, ours, ref):
        return
    rel = ((ours - ref).abs() / ref.abs().clamp_min(1e-30)).max().item() if ours.numel() else 0.0
    report.rows.append((name, "max rel", rel, rtol, rel <= rtol))


def lr_trace(optimizer, scheduler, named_params, steps):
    """``{name: [lr at iteration 0 .. steps-1]}`` of every trainable parameter under a per-iteration
    scheduler, run on copies (the trainer's optimizer and scheduler are left as they are)."""
    import copy

    group_index = {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
    where = {n: group_index[id(p)] for n, p in named_params if id(p) in group_index}
    import warnings

    optimizer, scheduler = copy.deepcopy((optimizer, scheduler))
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "optimizer.step() overridden" notice about the copies
        for _ in range(steps):
            rows.append([g["lr"] for g in optimizer.param_groups])
            optimizer.step()  # no gradients, so nothing moves
            scheduler.step()
    per_group = torch.tensor(rows, dtype=torch.float64)
    return {n: per_group[:, i] for n, i in where.items()}


def compare_lr_schedule(report, ours, ref):
    """The row of both sides' per-iteration learning rates of every trainable parameter (``ours``/``ref``:
    {name: [lr per iteration]}, ``ref`` under the reference's names)."""
    ref = map_names(ref, ours_name)
    names = common_names(report, "trainable parameters", ours, ref)
    relative(report, "lr schedule (every step, every parameter)", torch.stack([ours[n] for n in names]),
             torch.stack([ref[n] for n in names]), 1e-6)


def compare_update(report, label, ours, ref, atol, groups, keep, transpose=()):
    """The rows of one optimiser step (``ours``/``ref``: a step's ``lrs``, ``grads`` and ``after``, ``ref``
    under the reference's names): learning rates, gradients (``scaled``) and updated weights on the entries
    whose gradient was never noise-level; returns that ``keep`` mask, narrowed by this step (``noise_free``:
    noise once, out for good)."""
    r_lrs = {ours_name(n): v for n, v in ref["lrs"].items() if ours_name(n)}
    names = common_names(report, label + " trainable parameters", ours["lrs"], r_lrs)
    relative(report, label + " lr (every parameter)", [ours["lrs"][n] for n in names], [r_lrs[n] for n in names],
             1e-6)
    r_grads = map_names(ref["grads"], ours_name, transpose)
    compare_named(report, label + " grad", ours["grads"], r_grads, atol, groups, row=lambda *a: scaled(report, *a))
    now = noise_free(ours["grads"], r_grads)
    keep = now if keep is None else {n: now[n] & keep[n] for n in now if n in keep}
    compare_named(report, label + " updated", ours["after"], map_names(ref["after"], ours_name, transpose), atol,
                  groups, keep=keep)
    return keep


def checked_start(parse_args, argv, marker):
    """``(args, reference path)``: the parsed command line, the reference checkout checked for ``marker``,
    the world's size arguments checked, and torch seeded with ``--seed``."""
    from fairclip.tools.parity._common import check_reference

    args = parse_args(argv)
    path = check_reference(args.reference, marker)
    if args.batch_size < 1 or args.steps < 1:
        raise UserError("--batch-size and --steps must be at least 1")
    torch.manual_seed(args.seed)
    return args, path


__all__ = ["checked_start", "legacy_imports", "restored_modules", "cpu_synchronize", "quiet", "attribute", "recording",
           "add_world_arguments", "world_paths", "fp16_exact_copy", "build_ours", "fixed_views", "split_batches",
           "total_steps", "reference_text_files", "StepRecorder", "ours_name", "common_names", "map_names", "scaled",
           "noise_free", "compare_named", "relative", "lr_trace", "compare_lr_schedule", "compare_update"]
