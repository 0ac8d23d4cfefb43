"""Parity of our LaFTer with the authors' code (jmiemirza/LaFTer: trainers/LaFTer.py, LaFTer.py, utils/).

    python -m tools.parity.lafter --reference /path/to/LaFTer \\
        [--data ROOT --dataset KEY --clip WEIGHTS --images N --batch N --text-steps N]

LaFTer's own ``LaFTerUFT`` is built on the same CLIP weights, with our classes, our description file and
our templates, and its own ``train_txt_cls`` and ``train_lafter`` (from LaFTer.py) run beside our trainer:

1. the text classifier's training set: the embedding of every description and filled template, and its
   label (LaFTer's ``txt_features_for_text_cls`` against ours);
2. phase 1 from the same initial weights and the same noise (the global generator seeded with our seed,
   which our trainer's own generator reproduces): the classifier after ``--text-steps`` steps and its logits
   on the test images (the text classifier applied to images: LaFTer's ``forward_normal_for_pl``);
3. one self-training step (``train_lafter`` for one epoch of one batch, its text phase then a copy): the
   same visual prompts to start with, the same weak and strong views (ours, made once), and then the
   gradients and values after the step of the prompts, the classifier and the visual LayerNorms, and the
   student's test logits (``eval_clip``);
4. the recipe: our ``vit_b32.yaml`` against LaFTer's script and defaults.

Shims (this process only): ``dassl`` and ``timm`` are empty stand-ins when not installed (LaFTer imports
them, the compared code never calls them); ``.cuda()`` keeps tensors on the CPU without CUDA; the
descriptions are read from a ``descriptions/generic/<dataset>.json`` written for our classes in a
temporary working folder (where LaFTer also caches its text embeddings) and our dataset is added to its
list of LaFTer datasets; its visual prompts and classifier, hard-wired for ViT-B (50 tokens of width 768, 512-dimensional features),
are replaced by a parameter holding our initial prompts and a classifier of the backbone's size (the same
shapes for ViT-B/32 with 50 prompts), which starts from our initial weights as the reference's would; its ``trainers``
folder (no ``__init__.py``) is imported by path, so our own ``trainers`` package cannot shadow it; its
``build_model`` deletes three keys a JIT archive has and a plain state dict lacks, so they are added.
"""
import argparse
import contextlib
import io
import json
import os
import os.path as osp
import sys
import types

import torch

from fairclip.tools.parity import _inputs
from fairclip.tools.parity._common import ParityReport, build_parser, check_reference, git_commit, reference_on_path, run
from fairclip.toolbox.errors import UserError

REF_MODULES = ("trainers", "clip", "utils", "datasets", "dassl", "timm")
DATASET_NAME = "ParityDataset"
LAFTER_SCRIPT_LR = 0.0005  # scripts/LaFTer.sh: --lr 0.0005 (both phases)
_inputs.CONFIG_DIRS.setdefault("LaFTer", "LaFTer")


def parser():
    p = build_parser("lafter", "Compare our LaFTer with LaFTer's text classifier and one self-training step.")
    p.add_argument("--batch", type=int, default=8, help="train images in the self-training step (default 8)")
    p.add_argument("--text-steps", type=int, default=20,
                   help="steps of phase 1 compared (default 20; LaFTer trains 400-600)")
    return _inputs.add_world_args(p, images=16)


def _stand_in_modules():
    """Empty ``dassl``/``timm`` modules with the names LaFTer imports, when the real ones are absent."""
    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
        return m

    try:
        import dassl  # noqa: F401
    except ImportError:
        class Registry:
            def register(self, *a, **k):
                return (lambda obj: obj) if not a or not callable(a[0]) else a[0]

        module("dassl")
        module("dassl.engine", TRAINER_REGISTRY=Registry(), TrainerX=object)
        module("dassl.utils", load_checkpoint=None)
        module("dassl.data")
        module("dassl.data.data_manager", DataManager=None)
    try:
        import timm.scheduler  # noqa: F401
    except ImportError:
        module("timm")
        module("timm.scheduler", CosineLRScheduler=None)


def _load_by_path(name, path):
    """Import ``name`` from ``path``: LaFTer's ``trainers`` folder has no ``__init__.py``, so a regular
    ``trainers`` package elsewhere on ``sys.path`` (ours, when run from this repository) would win."""
    import importlib.util

    package, _, _ = name.rpartition(".")
    pkg = types.ModuleType(package)
    pkg.__path__ = [osp.dirname(path)]
    sys.modules[package] = pkg
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    args = parser().parse_args(argv)
    ref = check_reference(args.reference, osp.join("trainers", "LaFTer.py"))
    _inputs.resolve_world(args)
    if args.batch < 1 or args.text_steps < 0:
        raise UserError("--batch {} must be >= 1 and --text-steps {} >= 0".format(args.batch, args.text_steps))
    report = ParityReport("LaFTer", "jmiemirza/LaFTer@{}".format(git_commit(ref)))
    state_dict = _inputs.state_dict_of(args.clip)
    with _inputs.workdir() as work:
        from fairclip.toolbox import build_transform

        ours = _inputs.build_our_trainer("LaFTer", args, work, "TRAINER.LAFTER.TEXT_STEPS", str(args.text_steps),
                                         "DATALOADER.GPU_VIEWS", "never")
        c = ours.cfg.TRAINER.LAFTER
        test_tfm = build_transform(ours.cfg, is_train=False)
        strong_tfm = ours.custom_train_transform()[1]
        items = list(ours.dm.dataset.train_x)[:args.batch]
        torch.manual_seed(args.seed)
        from PIL import Image

        weak = _inputs.load_images(items, test_tfm)
        strong = torch.stack([strong_tfm(Image.open(item.impath).convert("RGB")) for item in items])
        labels = torch.tensor([item.label for item in items])
        test_images = _inputs.load_images(_inputs.test_items(ours, args.images), test_tfm)
        w0 = ours.model.classifier.weight.detach().clone()
        prompts0 = ours.model.prompts.detach().clone() if ours.model.prompts is not None else None
        descriptions = ours.descriptions()

        # Ours: phase 1, then one step.
        with _inputs.quiet():
            ours.train_text_phase()
        text_weight_ours = ours.model.teacher_weight.detach().clone()
        with torch.no_grad():
            text_logits_ours = ours.model.teacher_logits(test_images)
        ours.epoch, ours.batch_idx, ours.num_batches = 0, 0, 1
        ours.before_epoch()
        ours.forward_backward({"img": weak, "img2": strong, "label": labels})
        with torch.no_grad():
            test_ours = ours.model_inference(test_images)
        params_ours = {"prompts": ours.model.prompts, "classifier": ours.model.classifier.weight}

        folder = osp.join(work, "reference")
        os.makedirs(osp.join(folder, "descriptions", "generic"), exist_ok=True)
        with open(osp.join(folder, "descriptions", "generic", DATASET_NAME + ".json"), "w") as f:
            json.dump({name: list(sents) for name, sents in zip(ours.classnames, descriptions)}, f)
        cwd = os.getcwd()
        with _inputs.restore_modules(REF_MODULES), reference_on_path(ref, REF_MODULES), _inputs.cuda_calls_stay_on_cpu():
            _stand_in_modules()
            try:
                module = _load_by_path("trainers.LaFTer", osp.join(ref, "trainers", "LaFTer.py"))
                import utils.utils as ref_utils
            except ImportError as exc:
                raise UserError("cannot import {}/trainers/LaFTer.py ({})".format(ref, exc)) from None
            namespace = dict(vars(ref_utils))
            namespace.update(torch=torch, time=__import__("time"), F=torch.nn.functional)
            train_txt_cls, train_lafter, _ = _inputs.load_functions(
                osp.join(ref, "LaFTer.py"), ["train_txt_cls", "train_lafter", "lossmeter"], namespace,
                "LaFTer's LaFTer.py")
            # LaFTer's build_model deletes these keys unconditionally; a state dict (not a JIT archive) lacks them
            extra = {k: torch.tensor(0) for k in ("input_resolution", "context_length", "vocab_size")}
            clip_model = _inputs.reference_clip_model(dict(extra, **state_dict))
            try:
                os.chdir(folder)
                with _inputs.patched((module, "lafter_datasets", list(module.lafter_datasets) + [DATASET_NAME])), \
                        _inputs.quiet():
                    model = module.LaFTerUFT(model=clip_model, classes=list(ours.classnames), templates=["a photo of a {}"],
                                             ds_templates=ours.templates(), device="cpu", dataset_name=DATASET_NAME,
                                             txt_cls="lafter")
            finally:
                os.chdir(cwd)
            text_feats_ref, text_labels_ref = model.txt_features_for_text_cls, model.labels_for_text_cls
            if model.adapter[0].weight.shape != w0.shape:  # hard-wired for 512-dimensional features
                model.adapter = torch.nn.Sequential(torch.nn.Linear(w0.shape[1], w0.shape[0], bias=False))
            with torch.no_grad():
                model.adapter[0].weight.copy_(w0)
            if prompts0 is not None:
                model.prompt_embeddings = torch.nn.Parameter(prompts0.clone())
            ref_args = argparse.Namespace(lr=c.TEXT_LR, scheduler="cosine", epochs=1, mile_stones=None,
                                          txt_epochs=args.text_steps, print_freq=10 ** 9, entropy=False)
            torch.manual_seed(max(int(ours.cfg.SEED), 0))  # the noise of phase 1
            with _inputs.quiet():
                train_txt_cls(ref_args, model)
                with torch.no_grad():
                    text_logits_ref = model.forward_normal_for_pl(test_images)
            text_weight_ref = model.adapter_pl[0].weight.detach().clone()
            # Phase 2: train_lafter re-runs phase 1 with 0 steps (a copy of the trained classifier), then 1 epoch.
            ref_args.txt_epochs, ref_args.lr = 0, ours.cfg.OPTIM.LR
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                train_lafter(ref_args, model, [{"img": [weak, strong], "label": labels}],
                             [{"img": test_images, "label": torch.zeros(len(test_images), dtype=torch.long)}])
            with torch.no_grad():
                test_ref = model.eval_clip(test_images)
            params_ref = {"prompts": model.prompt_embeddings, "classifier": model.adapter[0].weight}
            visual_ref = _inputs.norm_params(model.model)

        report.tensors("text classifier inputs: embeddings", ours.text_feats, text_feats_ref, args.atol)
        report.agreement("text classifier inputs: labels", ours.text_labels, text_labels_ref)
        report.tensors("text classifier after {} steps".format(args.text_steps), text_weight_ours, text_weight_ref,
                       args.atol)
        report.tensors("text classifier logits on test images", text_logits_ours, text_logits_ref, args.atol)
        report.agreement("text classifier predictions", text_logits_ours.argmax(1), text_logits_ref.argmax(1))
        visual_ours = _inputs.norm_params(ours.clip_model)
        pairs = [("visual LayerNorms", visual_ours, visual_ref)]
        pairs += [(n, {n: params_ours[n]}, {n: params_ref[n]}) for n in ("classifier", "prompts")
                  if params_ours[n] is not None]
        for name, mine, theirs in pairs:
            _inputs.compare_step(report, name, mine, theirs, args.atol)
        scale = max(1.0, test_ref.abs().max().item())
        report.tensors("student test logits after the step", test_ours, test_ref, _inputs.round_tol(args.atol * scale))
        report.agreement("student test predictions", test_ours.argmax(1), test_ref.argmax(1))
        recipe = _recipe()
        for name, mine, theirs in [("lr (both phases)", recipe["lr"], LAFTER_SCRIPT_LR),
                                   ("text lr", recipe["text_lr"], LAFTER_SCRIPT_LR),
                                   ("batch size (LaFTer.py --batch_size)", recipe["batch"], 50),
                                   ("epochs (LaFTer.py --epochs)", recipe["epochs"], 50),
                                   ("visual prompt tokens (LaFTerUFT.num_tokens)", recipe["prompts"], model.num_tokens)]:
            report.scalar("recipe: " + name, mine, theirs, 0)
        _inputs.describe_inputs(ours, args, "{} texts, a batch of {} train images, {} test images".format(
            len(text_labels_ref), len(items), len(test_images)))
    return report.finish(args.json)


def _recipe():
    """Our ``configs/trainers/LaFTer/vit_b32.yaml`` values (not the run's: a synthetic override may differ)."""
    import yaml

    with open(osp.join(_inputs.REPO, "configs", "trainers", "LaFTer", "vit_b32.yaml")) as f:
        cfg = yaml.safe_load(f)
    t = cfg["TRAINER"]["LAFTER"]
    return {"lr": cfg["OPTIM"]["LR"], "text_lr": t["TEXT_LR"], "batch": cfg["DATALOADER"]["TRAIN_X"]["BATCH_SIZE"],
            "epochs": cfg["OPTIM"]["MAX_EPOCH"], "prompts": t["N_PROMPTS"]}


if __name__ == "__main__":
    run(main)
