"""Parity of our WCA with the authors' code (JinhaoLee/WCA, main.py + helper.py).

    python -m tools.parity.wca --reference /path/to/WCA [--data ROOT --dataset KEY --clip WEIGHTS --images N]

WCA's ``main()`` is run whole, in a temporary folder, on our test images: it crops every image
``n_samples`` times, pre-computes the crop features and their agreement with the whole image, builds the
description prototypes (``generate_weights("ours")``) and, for one run, samples ``patch_n`` of the crops
and scores their weighted composite against the prototypes. Its inputs are swapped for ours:

* the config ``cfgs/<dataset>.yaml`` is the checkout's own file for the dataset when it has one (else
  ``cub.yaml``) with ``n_run`` 1 (``--n-samples``/``--patch-n`` may shrink it for a quick check);
* its prompt file ``prompts/<dataset>/cupl.json`` holds our descriptions and ``features/<dataset>/<dataset>.json``
  our class names; ``clip.load`` returns the checkout's own CLIP on our weights (fp32) and its preprocessing;
* ``helper.load_dataset`` returns our test items read by WCA's own loader (``custom_loader``);
* ``T.RandomCrop`` is torchvision's, recording each box it draws; ``torch.randint`` records the crop indices
  the run samples; ``accuracy`` and ``generate_weights`` record what they are given and return.

Our trainer then scores the very same views: the centre view through our test transform, and the recorded
boxes (the sampled ones, duplicates included) through our crop transform. Rows: the images, the global
and crop features, the prototypes [K, D], the scores [N, K] (WCA's are cosines: ours are divided by
``TRAINER.WCA.LOGIT_SCALE``) and the predictions.
"""
import json
import os
import os.path as osp
import sys
import types

import torch
import yaml

from fairclip.tools.parity import _inputs
from fairclip.tools.parity._common import (ParityReport, build_parser, check_reference, git_commit,
                                           reference_on_path, run)

REF_MODULES = ("clip", "helper", "utils", "my_datasets", "main")


def parser():
    p = build_parser("wca", "Compare our WCA with WCA's main.py (one run of its crop sampling).")
    p.add_argument("--n-samples", type=int, default=0, help="crops per image (default: the WCA config's n_samples)")
    p.add_argument("--patch-n", type=int, default=0, help="crops sampled per run (default: the WCA config's patch_n)")
    return _inputs.add_world_args(p, images=32)


def reference_config(ref, dataset, args, clip_res):
    name = dataset + ".yaml" if osp.isfile(osp.join(ref, "cfgs", dataset + ".yaml")) else "cub.yaml"
    with open(osp.join(ref, "cfgs", name)) as f:
        hparams = yaml.safe_load(f)
    hparams.update(model_size="parity-{}px".format(clip_res), data_path="unused", n_run=1, batch_size=16)
    if args.n_samples:
        hparams["n_samples"] = args.n_samples
    if args.patch_n:
        hparams["patch_n"] = args.patch_n
    hparams["methods"] = [m for m in hparams["methods"] if list(m.values())[0]["name"] == "ours"]
    return name, hparams


class ItemsDataset(torch.utils.data.Dataset):
    """Our test items, each read by WCA's ``custom_loader`` (as its torchvision datasets do)."""

    def __init__(self, items, loader):
        self.items, self.loader = items, loader

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.loader(self.items[i].impath), self.items[i].label


def run_reference(ref, work, state_dict, items, classnames, descriptions, hparams, dataset, seed):
    """Run WCA's main() with the shims; return what it computed."""
    os.makedirs(osp.join(work, "cfgs"))
    os.makedirs(osp.join(work, "prompts", dataset))
    os.makedirs(osp.join(work, "features", dataset))
    with open(osp.join(work, "cfgs", dataset + ".yaml"), "w") as f:
        yaml.safe_dump(hparams, f)
    names = [c.replace("_", " ") for c in classnames]
    with open(osp.join(work, "prompts", dataset, "cupl.json"), "w") as f:
        json.dump(dict(zip(names, descriptions)), f)
    with open(osp.join(work, "features", dataset, dataset + ".json"), "w") as f:
        json.dump(list(classnames), f)

    record = {"boxes": [], "randint": [], "accuracy": [], "weights": {}, "features": None, "after_features": False}
    with _inputs.restore_modules(REF_MODULES + ("fire",)), reference_on_path(ref, REF_MODULES):
        if "fire" not in sys.modules:
            try:
                import fire  # noqa: F401  (main.py imports it for its command line; not used here)
            except ImportError:
                sys.modules["fire"] = types.ModuleType("fire")
        import helper
        import main as wca_main

        model = _inputs.reference_clip_model(state_dict)
        processor = wca_main.clip._transform(model.visual.input_resolution)
        v2 = wca_main.T

        class RecordingRandomCrop(v2.RandomCrop):
            def make_params(self, flat_inputs):
                params = super().make_params(flat_inputs)
                record["boxes"].append((params["left"], params["top"], self.size[0]))
                return params

        transforms = types.SimpleNamespace(**{k: getattr(v2, k) for k in dir(v2) if not k.startswith("_")})
        transforms.RandomCrop = RecordingRandomCrop
        randint = torch.randint

        def recording_randint(*args, **kwargs):
            out = randint(*args, **kwargs)
            if record["after_features"]:
                record["randint"].append(out.clone())
            return out

        precompute = wca_main.load_precomputed_features

        def recording_precompute(*args, **kwargs):
            out = precompute(*args, **kwargs)
            record["features"] = out
            record["after_features"] = True
            return out

        weights_fn = wca_main.generate_weights

        def recording_weights(method, *args, **kwargs):
            out = weights_fn(method, *args, **kwargs)
            record["weights"][method] = out.clone()
            return out

        accuracy = wca_main.accuracy

        def recording_accuracy(logits, target, n, name):
            record["accuracy"].append(logits.clone())
            return accuracy(logits, target, n, name)

        cwd = os.getcwd()
        try:
            os.chdir(work)
            with _inputs.patched(
                    (wca_main.clip, "load", lambda *a, **k: (model, processor)),
                    (wca_main, "T", transforms),
                    (wca_main, "load_precomputed_features", recording_precompute),
                    (wca_main, "generate_weights", recording_weights),
                    (wca_main, "accuracy", recording_accuracy),
                    (helper, "load_dataset", lambda data_path, dataset_name, custom_loader: ItemsDataset(
                        items, custom_loader)),
                    (torch, "randint", recording_randint)), _inputs.quiet():
                wca_main.main(dataset_name=dataset, num_workers=0, seed=seed, device="cpu")
        finally:
            os.chdir(cwd)
    return record


def main(argv=None):
    args = parser().parse_args(argv)
    ref = check_reference(args.reference, "main.py")
    if not osp.isfile(osp.join(ref, "helper.py")):
        from fairclip.toolbox.errors import UserError

        raise UserError("--reference {}: helper.py not found; pass a checkout of JinhaoLee/WCA".format(ref))
    _inputs.resolve_world(args)
    report = ParityReport("WCA", "JinhaoLee/WCA@{}".format(git_commit(ref)))
    state_dict = _inputs.state_dict_of(args.clip)
    with _inputs.workdir() as work:
        ours = _inputs.build_our_trainer("WCA", args, work)
        c = ours.cfg.TRAINER.WCA
        items = _inputs.test_items(ours, args.images)
        res = ours.clip_model.visual.input_resolution
        cfg_name, hparams = reference_config(ref, args.dataset, args, res)
        rec = run_reference(ref, osp.join(work, "reference"), state_dict, items, ours.classnames, ours.descriptions(),
                            hparams, args.dataset, max(args.seed, 0))
        n_samples, patch_n = hparams["n_samples"], hparams["patch_n"]
        if len(rec["boxes"]) != len(items) * n_samples or len(rec["randint"]) != 1:
            from fairclip.toolbox.errors import UserError

            raise UserError("WCA's main() drew {} crops and {} index samples, expected {} and 1; is the checkout's "
                            "main.py the released one?".format(len(rec["boxes"]), len(rec["randint"]),
                                                               len(items) * n_samples))
        boxes = [rec["boxes"][i * n_samples:(i + 1) * n_samples] for i in range(len(items))]
        picked = rec["randint"][0]
        patches, target, global_ref = rec["features"]

        # Our views of the same boxes, and our trainer's scores on them.
        from PIL import Image

        with _inputs.quiet():
            centre_tfm, crops_tfm = ours.custom_test_transform()
        centres, crops = [], []
        for item, item_boxes in zip(items, boxes):
            with Image.open(item.impath) as img:
                img = img.convert("RGB")
                centres.append(centre_tfm(img))
                crops.append(torch.stack([crops_tfm.finish(img.crop((x, y, x + s, y + s))) for x, y, s in item_boxes]))
        centres, crops = torch.stack(centres), torch.stack(crops)
        with torch.no_grad():
            global_ours = ours.encode_images(centres).cpu()
            crop_feats = ours.encode_images(crops.flatten(0, 1)).view(len(items), n_samples, -1).cpu()
            scores = (ours.model_inference((centres, crops[:, picked])) / c.LOGIT_SCALE).cpu()
        theirs = rec["accuracy"][-1].float().cpu()

        report.tensors("global image features", global_ours, global_ref, args.atol)
        report.tensors("crop features ({} per image)".format(n_samples), crop_feats, patches[:, :, :-1], args.atol)
        report.tensors("crop / image agreement", torch.einsum("bnd,bd->bn", crop_feats, global_ours),
                       patches[:, :, -1], args.atol)
        report.tensors("description prototypes", ours.prototypes, rec["weights"]["ours"].t(), args.atol)
        report.tensors("scores ({} sampled crops)".format(patch_n), scores, theirs, args.atol)
        report.agreement("predictions", scores.argmax(1), theirs.argmax(1))
        _inputs.describe_inputs(ours, args, "{} test images".format(len(items)))
        print("WCA config: cfgs/{} with n_samples={}, patch_n={}, n_run=1; our anchor templates: {}".format(
            cfg_name, n_samples, patch_n, ours.anchor_templates()))
    return report.finish(args.json)


if __name__ == "__main__":
    run(main)
