"""Parity of our CuPL with the authors' script (sarahpratt/CuPL, classify_imagenet.py).

    python -m tools.parity.cupl --reference /path/to/CuPL [--data ROOT --dataset KEY --clip WEIGHTS --images N]

CuPL's code is one script for ImageNet: it loads CLIP, builds three classifiers (the standard templates;
the CuPL descriptions; both together) and classifies the validation images. The whole script is run, in a
temporary folder, with its inputs swapped for ours:

* ``clip.load`` returns CLIP's own ``build_model`` on our weights file (fp32) and CLIP's preprocessing;
* its ImageNet reader (``imagenetdataset.ImagenetDataset``) is replaced by a reader of our test items with
  the same interface (paths, labels, ``idx_to_label``, ``idx_to_text`` = display names);
* its templates (``imagenet_prompts.standard_image_prompts``) are the dataset's templates
  (``DATASET.TEMPLATES``), its prompt file (``./imagenet_prompts/CuPL_image_prompts.json``) holds our
  descriptions keyed by the display names;
* its data loader runs one batch without workers, and ``.cuda()`` is a no-op on a machine without CUDA.

The images the script's CLIP sees are recorded and given to our trainers. Rows, for each classifier: the
class text embeddings [K, D], the logits [N, K] (CuPL's are cosines: ours are divided by CLIP's logit
scale) and the predictions; and the images: our test transform against CLIP's preprocessing.
"""
import json
import os
import os.path as osp
import runpy
import sys
import types

import torch

from fairclip.tools.parity import _inputs
from fairclip.tools.parity._common import (ParityReport, build_parser, check_reference, git_commit,
                                           reference_on_path, run)

SCRIPT = "classify_imagenet.py"
REF_MODULES = ("clip", "imagenetdataset", "imagenet_prompts", "imagenet_classnames")


def parser():
    p = build_parser("cupl", "Compare our CuPL (and its template/full variants) with CuPL's classify_imagenet.py.")
    return _inputs.add_world_args(p, images=64)


class ItemsReader(torch.utils.data.Dataset):
    """Our test items behind the interface of CuPL's ImagenetDataset."""

    def __init__(self, items, classnames, transform=None):
        from PIL import Image

        self.open = Image.open
        self.transform = transform
        self.paths = [i.impath for i in items]
        self.labels = [i.label for i in items]
        self.idx_to_label = list(classnames)
        self.idx_to_text = [c.replace("_", " ") for c in classnames]

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        img = self.open(self.paths[i])
        return (self.transform(img) if self.transform else img), int(self.labels[i]), i


def run_reference(ref, work, state_dict, items, classnames, templates, descriptions):
    """Run CuPL's script with the shims; return its namespace and the images its CLIP encoded."""
    os.makedirs(osp.join(work, "imagenet_prompts"))
    with open(osp.join(work, "imagenet_prompts", "CuPL_image_prompts.json"), "w") as f:
        json.dump({c.replace("_", " "): d for c, d in zip(classnames, descriptions)}, f)
    seen = []
    with _inputs.restore_modules(REF_MODULES), reference_on_path(ref, REF_MODULES):
        import clip  # CuPL imports OpenAI's package (it has no copy of its own)

        model = _inputs.reference_clip_model(state_dict)
        encode_image = model.encode_image

        def recording_encode_image(images):
            seen.append(images.detach().clone())
            return encode_image(images)

        model.encode_image = recording_encode_image
        preprocess = clip.clip._transform(model.visual.input_resolution)
        reader = types.ModuleType("imagenetdataset")
        reader.ImagenetDataset = lambda path, transform=None: ItemsReader(items, classnames, transform)
        prompts = types.ModuleType("imagenet_prompts")
        standard = types.ModuleType("imagenet_prompts.standard_image_prompts")
        standard.imagenet_templates = list(templates)
        prompts.standard_image_prompts = standard
        loader = torch.utils.data.DataLoader

        def one_batch(dataset, *args, **kwargs):
            return loader(dataset, batch_size=len(dataset), num_workers=0)

        modules = {"imagenetdataset": reader, "imagenet_prompts": prompts,
                   "imagenet_prompts.standard_image_prompts": standard}
        cwd = os.getcwd()
        try:
            sys.modules.update(modules)
            os.chdir(work)
            with _inputs.patched((clip, "load", lambda *a, **k: (model, preprocess)),
                                 (torch.utils.data, "DataLoader", one_batch)), \
                    _inputs.cuda_calls_stay_on_cpu(), _inputs.quiet():
                namespace = runpy.run_path(osp.join(ref, SCRIPT), run_name="__cupl_reference__")
        finally:
            os.chdir(cwd)
            for name in modules:
                sys.modules.pop(name, None)
    return namespace, torch.cat(seen)


def main(argv=None):
    args = parser().parse_args(argv)
    ref = check_reference(args.reference, SCRIPT)
    _inputs.resolve_world(args)
    report = ParityReport("CuPL", "sarahpratt/CuPL@{}".format(git_commit(ref)))
    state_dict = _inputs.state_dict_of(args.clip)
    with _inputs.workdir() as work:
        from fairclip.toolbox import build_transform

        ours = _inputs.build_our_trainer("CuPL", args, work)
        ours_full = _inputs.build_our_trainer("CuPL", args, work, "TRAINER.CUPL.ADD_TEMPLATES", "True")
        ours_base = _inputs.build_our_trainer("ZeroshotCLIP", args, work,
                                              "DATASET.TEMPLATES", ours.cfg.DATASET.TEMPLATES)
        items = _inputs.test_items(ours, args.images)
        namespace, images = run_reference(ref, osp.join(work, "reference"), state_dict, items, ours.classnames,
                                          ours.templates(), ours.descriptions())
        with _inputs.quiet():
            our_tfm = build_transform(ours.cfg, is_train=False)
        report.tensors("images: ours vs CLIP preprocess", _inputs.load_images(items, our_tfm), images,
                       args.atol)
        for label, trainer, weights, logits in [
                ("CuPL", ours, "zeroshot_weights_cupl", "logits_cupl"),
                ("CuPL full", ours_full, "zeroshot_weights_gpt_both", "logits_both"),
                ("templates", ours_base, "zeroshot_weights_base", "logits_base")]:
            with torch.no_grad():
                mine = (trainer.model_inference(images.to(trainer.device)) / trainer.logit_scale).cpu()
            theirs = namespace[logits].float().cpu()
            report.tensors("{}: class text embeddings".format(label), trainer.class_weights,
                           namespace[weights].t().float(), args.atol)
            report.tensors("{}: logits (cosine)".format(label), mine, theirs, args.atol)
            report.agreement("{}: predictions".format(label), mine.argmax(1), theirs.argmax(1))
        _inputs.describe_inputs(ours, args, "{} test images".format(len(items)))
    return report.finish(args.json)


if __name__ == "__main__":
    run(main)
