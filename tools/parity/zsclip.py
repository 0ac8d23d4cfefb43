"""Parity of our ZeroshotCLIP with CoOp's (KaiyangZhou/CoOp, trainers/zsclip.py, on Dassl).

    python -m tools.parity.zsclip --reference /path/to/CoOp --dassl /path/to/Dassl.pytorch \\
        [--data ROOT --dataset KEY --clip WEIGHTS --images N]

Both classes are run on the same CLIP weights and the same preprocessed test images:

* ``ZeroshotCLIP`` (one hand-written template per dataset) against ours with ``DATASET.TEMPLATES coop``
  (the method's default);
* ``ZeroshotCLIP2`` (CoOp's prompt ensemble: its selected ImageNet templates plus the hand-written one)
  against ours with the same templates given as a JSON file.

Rows: the templates, the class text embeddings [K, D], the logits [N, K] and the predictions; and the
image pipeline: our PIL test transform and our actual test loader against Dassl's test transform.

Shims (this process only, the checkout is not touched): CoOp's ``load_clip_to_cpu`` returns the
reference's own ``clip.model.build_model`` on our weights file in fp32 (CoOp downloads by name and runs
fp16); a dataset CoOp has no template for (e.g. the synthetic world) gets ours added to its
``CUSTOM_TEMPLATES``; ``ZeroshotCLIP2.templates`` is restored after the run (CoOp appends to it in place).
The trainers are built without Dassl's ``TrainerX.__init__`` (no data loaders): ``build_model`` reads only
``cfg``, ``dm.dataset.classnames`` and ``device``.
"""
import json
import os.path as osp
import types

import torch

from fairclip.tools.parity import _inputs
from fairclip.tools.parity._common import (ParityReport, build_parser, check_reference, git_commit,
                                           reference_on_path, run)

REF_MODULES = ("trainers", "clip", "datasets")


def parser():
    p = build_parser("zsclip", "Compare our ZeroshotCLIP with CoOp's ZeroshotCLIP and ZeroshotCLIP2.")
    p.add_argument("--dassl", default="", help="path to a Dassl.pytorch checkout (CoOp's trainers import dassl)")
    return _inputs.add_world_args(p, images=64)


def reference_cfg(our_cfg):
    """The few keys CoOp's build_model reads."""
    from yacs.config import CfgNode as CN

    cfg = CN()
    cfg.DATASET = CN()
    cfg.DATASET.NAME = our_cfg.DATASET.NAME
    cfg.MODEL = CN()
    cfg.MODEL.BACKBONE = CN()
    cfg.MODEL.BACKBONE.NAME = our_cfg.MODEL.BACKBONE.NAME
    return cfg


def dassl_test_transform(our_cfg):
    """Dassl's own test transform for our INPUT settings, or None when Dassl is not importable."""
    try:
        from dassl.config import get_cfg_default
        from dassl.data.transforms import build_transform
    except ImportError:
        return None
    cfg = get_cfg_default()
    for key in ("SIZE", "INTERPOLATION", "PIXEL_MEAN", "PIXEL_STD", "TRANSFORMS"):
        setattr(cfg.INPUT, key, our_cfg.INPUT[key])
    with _inputs.quiet():
        return build_transform(cfg, is_train=False)


def loader_images(trainer, n):
    """The first ``n`` test images as our test loader gives them (GPU views, canvas batches, ...)."""
    images, labels = [], []
    for batch in trainer.test_loader:
        x, y = trainer.parse_batch_test(batch)
        images.append(x.cpu())
        labels.append(y.cpu())
        if sum(len(i) for i in images) >= n:
            break
    return torch.cat(images)[:n], torch.cat(labels)[:n]


def run_reference(module, cls_name, state_dict, our_cfg, classnames, images, template):
    """Build CoOp's ``cls_name`` with the shims and return ``(templates, text_features, logits)``."""
    model = _inputs.reference_clip_model(state_dict)
    cls = getattr(module, cls_name)
    custom = dict(module.CUSTOM_TEMPLATES)
    if our_cfg.DATASET.NAME not in custom and cls_name == "ZeroshotCLIP":
        print("note: CoOp has no template for {}; ours ({!r}) is added to its CUSTOM_TEMPLATES".format(
            our_cfg.DATASET.NAME, template))
    custom.setdefault(our_cfg.DATASET.NAME, template)
    shims = [(module, "load_clip_to_cpu", lambda cfg: model), (module, "CUSTOM_TEMPLATES", custom)]
    if "templates" in vars(cls):
        shims.append((cls, "templates", list(cls.templates)))
    with _inputs.patched(*shims), torch.no_grad():
        trainer = cls.__new__(cls)
        trainer.cfg = reference_cfg(our_cfg)
        trainer.dm = types.SimpleNamespace(dataset=types.SimpleNamespace(classnames=list(classnames)))
        trainer.device = torch.device("cpu")
        with _inputs.quiet():
            trainer.build_model()
        templates = list(trainer.templates) if cls_name != "ZeroshotCLIP" else [custom[our_cfg.DATASET.NAME]]
        logits = trainer.model_inference(images)
    return templates, trainer.text_features.float(), logits.float()


def compare(report, atol, label, ours, templates_ref, text_ref, logits_ref, images):
    with torch.no_grad():
        logits = ours.model_inference(images.to(ours.device)).cpu()
    _inputs.compare_sets(report, "{}: templates".format(label), enumerate(ours.templates()), enumerate(templates_ref))
    report.tensors("{}: class text embeddings".format(label), ours.class_weights, text_ref, atol)
    report.tensors("{}: logits".format(label), logits, logits_ref, _inputs.round_tol(atol * ours.logit_scale))
    report.agreement("{}: predictions".format(label), logits.argmax(1), logits_ref.argmax(1))


def main(argv=None):
    args = parser().parse_args(argv)
    ref = check_reference(args.reference, osp.join("trainers", "zsclip.py"))
    _inputs.resolve_world(args)
    report = ParityReport("ZeroshotCLIP", "KaiyangZhou/CoOp@{}".format(git_commit(ref)))
    state_dict = _inputs.state_dict_of(args.clip)
    with _inputs.workdir() as work:
        from fairclip.toolbox import build_transform

        ours = _inputs.build_our_trainer("ZeroshotCLIP", args, work)
        items = _inputs.test_items(ours, args.images)
        with _inputs.quiet():
            our_tfm = build_transform(ours.cfg, is_train=False)
        images = _inputs.load_images(items, our_tfm)
        coop_template = ours.templates()[0]

        with _inputs.restore_modules(REF_MODULES), reference_on_path(ref, REF_MODULES), _inputs.on_path([args.dassl]):
            dassl_tfm = dassl_test_transform(ours.cfg)
            try:
                import trainers.zsclip as module
            except ImportError as exc:
                from fairclip.toolbox.errors import UserError

                raise UserError("cannot import {}/trainers/zsclip.py ({}); pass --dassl /path/to/Dassl.pytorch".format(
                    ref, exc)) from None
            single = run_reference(module, "ZeroshotCLIP", state_dict, ours.cfg, ours.classnames, images, coop_template)
            ensemble = run_reference(module, "ZeroshotCLIP2", state_dict, ours.cfg, ours.classnames, images,
                                     coop_template)

        if dassl_tfm is not None:
            ref_images = _inputs.load_images(items, dassl_tfm)
            report.tensors("images: our test transform vs Dassl's", images, ref_images, args.atol)
            loaded, labels = loader_images(ours, len(items))
            if torch.equal(labels, torch.tensor([i.label for i in items])):
                report.tensors("images: our test loader vs Dassl's", loaded, ref_images, args.atol)
            else:
                print("note: our test loader does not yield the split in order; its images are not compared")
        compare(report, args.atol, "ZeroshotCLIP", ours, *single, images)

        tmpl_file = osp.join(work, "coop_ensemble.json")
        with open(tmpl_file, "w") as f:
            json.dump(ensemble[0], f)
        ours2 = _inputs.build_our_trainer("ZeroshotCLIP", args, work, "DATASET.TEMPLATES", tmpl_file)
        compare(report, args.atol, "ZeroshotCLIP2", ours2, *ensemble, images)
        _inputs.describe_inputs(ours, args, "{} test images".format(len(items)))
    return report.finish(args.json)


if __name__ == "__main__":
    run(main)
