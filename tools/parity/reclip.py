"""Parity of our ReCLIP with the authors' code (michiganleon/ReCLIP_WACV: reclip.py, models.py).

    python -m tools.parity.reclip --reference /path/to/ReCLIP_WACV \\
        [--data ROOT --dataset KEY --clip WEIGHTS --train-images N --images N]

The reference's own ``main()`` runs one epoch on the first ``--train-images`` images of our train split
(its batch = all of them: one evaluation pass, both label propagations, one training step of both
branches, the end-of-epoch update of ReCLIP-T's nodes), with our classes, our templates, the same CLIP
weights and our config's hyper-parameters on its command line. Our trainer does the same epoch piece by
piece (``before_epoch``, one ``forward_backward`` on the same batch, ``update_text_nodes``). Compared:

1. the images (our test transform against CLIP's preprocess), the zero-shot class embeddings (all
   templates) and the class-subspace projection (the reference stores it in fp16);
2. the conjugate-gradient solve on one graph (ours, dense for the reference's ``cg_diffusion``), the
   propagated pseudo-labels of both branches and ReCLIP-V's cluster centroids;
3. one step: the gradients and the values after the step of the visual norms (ReCLIP-V) and the text
   LayerNorms (ReCLIP-T), ReCLIP-T's nodes after the epoch, and the test logits of the ensemble;
4. the recipe: our ``vit_b32.yaml`` against the defaults of the reference's command line.

Shims (this process only): ``clip.load`` returns the reference's CLIP (OpenAI's ``build_model``) on our
weights and CLIP's preprocess for the size; ``datasets`` (which needs pandas and the authors' folders) is
replaced by our train split, and its ``accuracy`` (logging only; NumPy 2 refuses its ``float()`` of an
array) by a top-k count; the class names and templates come
from a ``prompts/clip_prompts`` file written for our dataset; the loaders use no worker processes;
SciPy's ``cg`` gets ``tol`` as ``rtol`` (renamed in SciPy 1.12); the fp16 projection keeps its fp16
values but is multiplied in fp32 (a CPU cannot multiply fp32 by fp16).
"""
import inspect
import json
import os
import os.path as osp
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F

from fairclip.tools.parity import _inputs
from fairclip.tools.parity._common import ParityReport, build_parser, check_reference, git_commit, reference_on_path, run

REF_MODULES = ("models", "datasets", "utils", "reclip", "clip")
DATASET_NAME = "parity"
_inputs.CONFIG_DIRS.setdefault("ReCLIP", "ReCLIP")


def parser():
    p = build_parser("reclip", "Compare our ReCLIP with one epoch of ReCLIP's own main().")
    p.add_argument("--train-images", type=int, default=128,
                   help="train images adapted on, all in one batch (default 128; 0 = the whole train split)")
    return _inputs.add_world_args(p, images=16)


class _ListDataset(torch.utils.data.Dataset):
    """Our train items as the reference's datasets are: ``(preprocessed image, index, label)``."""

    def __init__(self, items, preprocess):
        self.items, self.preprocess = items, preprocess

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.items[i].impath) as img:
            return self.preprocess(img.convert("RGB")), i, self.items[i].label


def _top1_count(output, target, topk=(1,)):
    """Stands in for the reference's ``accuracy`` (its logging only), whose ``float()`` of a one-element
    array NumPy 2 refuses: the number of correct top-k predictions."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [float(correct[:k].sum()) for k in topk]


def _cg_with_tol(cg):
    """SciPy's ``cg`` accepting the ``tol`` keyword the reference passes (SciPy >= 1.12 calls it ``rtol``)."""
    if "tol" in inspect.signature(cg).parameters:
        return cg

    def call(A, b, tol=1e-5, maxiter=None, **kwargs):
        return cg(A, b, rtol=tol, maxiter=maxiter, **kwargs)

    return call


def run_reference(ref, work, items, classnames, templates, state_dict, size, hyper):
    """The reference's ``main()`` for one epoch; returns the models and label propagations it built."""
    import importlib

    from fairclip.clip_backbone.loading import clip as openai_clip

    folder = osp.join(work, "reference")
    os.makedirs(osp.join(folder, "prompts"), exist_ok=True)
    names = [c.replace("_", " ") for c in classnames]
    with open(osp.join(folder, "prompts", "clip_prompts"), "w") as f:
        json.dump({DATASET_NAME: {"classes": names, "templates": list(templates)}}, f)
    preprocess = importlib.import_module(openai_clip.__name__ + ".clip")._transform(size)  # CLIP's own preprocess
    built = {"v": [], "t": [], "lp": []}
    stub = types.ModuleType("datasets")
    stub.get_dataset = lambda dataset_name, preprocess: _ListDataset(items, preprocess)
    stub.accuracy = _top1_count
    sys.modules["datasets"] = stub

    models = importlib.import_module("models")
    reclip = importlib.import_module("reclip")

    def load(name=None, device="cpu", download_root=None, **kwargs):
        return _inputs.reference_clip_model(state_dict), preprocess

    class V(models.CLIP_LN_V):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            built["v"].append(self)

    class T(models.CLIP_LN_T):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            built["t"].append(self)

    class LP(models.LabelPropagationCluster):
        def __init__(self, *a, **k):
            built["lp"].append(self)
            super().__init__(*a, **k)

        def update_projection(self, classification_weight=None):
            super().update_projection(classification_weight)
            # fp16 values (as the reference stores them), multiplied in fp32 on a CPU
            self.projection_matrix = torch.nn.Parameter(self.projection_matrix.float(), requires_grad=False)

    def loader(*args, **kwargs):
        return torch.utils.data.DataLoader(*args, **dict(kwargs, num_workers=0))

    argv = ["reclip.py", "--dataset", DATASET_NAME, "--architecture", "ViT-B/32", "--bs", str(len(items)),
            "--epoch_max", "1", "--neighbor_size", str(hyper["k"]), "--alpha", str(hyper["alpha"]),
            "--cut_dim", str(hyper["cut_dim"]), "--lrt", str(hyper["lr_text"]), "--lrv", str(hyper["lr"]),
            "--wd", str(hyper["wd"]), "--log", folder + os.sep]
    cwd = os.getcwd()
    s_linalg = types.SimpleNamespace(cg=_cg_with_tol(models.s_linalg.cg))
    try:
        os.chdir(folder)
        with _inputs.patched((models.clip, "load", load), (reclip, "CLIP_LN_V", V), (reclip, "CLIP_LN_T", T),
                             (reclip, "LabelPropagationCluster", LP), (reclip, "DataLoader", loader),
                             (models, "s_linalg", s_linalg), (sys, "argv", argv)), _inputs.quiet():
            with np.errstate(all="ignore"):  # its entropy takes the log of propagated scores <= 0
                reclip.main()
    finally:
        os.chdir(cwd)
    defaults = reclip.parser.parse_args(["--dataset", DATASET_NAME])
    return built["v"][0], built["t"][0], built["lp"][0], built["lp"][1], defaults, preprocess, models


def main(argv=None):
    args = parser().parse_args(argv)
    ref = check_reference(args.reference, "reclip.py")
    _inputs.resolve_world(args)
    if args.train_images < 0:
        from fairclip.toolbox.errors import UserError

        raise UserError("--train-images {} must be 0 (all) or positive".format(args.train_images))
    report = ParityReport("ReCLIP", "michiganleon/ReCLIP_WACV@{}".format(git_commit(ref)))
    state_dict = _inputs.state_dict_of(args.clip)
    with _inputs.workdir() as work:
        from fairclip.toolbox import build_transform
        from fairclip.trainers.reclip import class_subspace_projection, conjugate_gradient, knn_affinity

        # the reference always projects (the synthetic world's override turns the projection off)
        ours = _inputs.build_our_trainer("ReCLIP", args, work, "DATALOADER.GPU_VIEWS", "never",
                                         "TRAINER.RECLIP.EVAL_EACH_EPOCH", "False",
                                         "TRAINER.RECLIP.PROJECTION", "class_subspace")
        c = ours.cfg.TRAINER.RECLIP
        items = ours.train_items[:args.train_images] if args.train_images else ours.train_items
        ours.train_items = list(items)
        ours.row_of = {item.impath: i for i, item in reversed(list(enumerate(items)))}
        ours._sweep_loader, ours._frozen_feats = None, None
        test_tfm = build_transform(ours.cfg, is_train=False)
        images = _inputs.load_images(items, test_tfm)
        test_images = _inputs.load_images(_inputs.test_items(ours, args.images), test_tfm)
        hyper = {"k": c.N_NEIGHBORS, "alpha": c.ALPHA, "cut_dim": c.CUT_DIM, "lr_text": c.LR_TEXT,
                 "lr": ours.cfg.OPTIM.LR, "wd": ours.cfg.OPTIM.WEIGHT_DECAY}

        # Ours: the epoch piece by piece.
        with _inputs.quiet():
            ours.epoch, ours.batch_idx, ours.num_batches = 0, 0, 1
            ours.before_epoch()
            v_nodes = ours.model.v_nodes.detach().clone()
            projection = class_subspace_projection(v_nodes, c.CUT_DIM)
            batch = {"img": images, "impath": [item.impath for item in items],
                     "label": torch.tensor([item.label for item in items])}
            ours.forward_backward(batch)
            ours.update_text_nodes()
            ours._eval_text = ours.model.class_embeddings().detach()
            with torch.no_grad():
                test_ours = ours.model_inference(test_images).cpu()
        visual_ours, text_ours = _inputs.norm_params(ours.clip_model), _inputs.norm_params(ours.clip_model, visual=False)
        # One graph, solved by both sides' conjugate gradients (float64, as SciPy).
        points = F.normalize(torch.cat([v_nodes, ours._frozen_feats]) @ projection, dim=-1)
        graph = knn_affinity(points, c.N_NEIGHBORS, c.KNN_CHUNK).double()
        y = torch.zeros(points.shape[0], len(v_nodes), dtype=torch.float64)
        y[torch.arange(len(v_nodes)), torch.arange(len(v_nodes))] = 1.0
        scores_ours = conjugate_gradient(lambda v: v - c.ALPHA * (graph @ v), y, c.CG_ITERS, c.CG_TOL)

        with _inputs.restore_modules(REF_MODULES), reference_on_path(ref, REF_MODULES):
            v_model, t_model, v_lp, t_lp, defaults, preprocess, models = run_reference(
                ref, work, items, ours.classnames, ours.templates(), state_dict, ours.cfg.INPUT.SIZE[0], hyper)
            ref_images = _inputs.load_images(items, preprocess)
            with _inputs.quiet(), np.errstate(all="ignore"):
                _, scores_ref = _cg_diffusion(t_lp, models, y, graph, c)
            with torch.no_grad():
                names = [n.replace("_", " ") for n in ours.classnames]
                test_ref = 0.5 * (t_model(test_images, names)[0] + v_model(test_images)[0]).float()
            visual_ref = _inputs.norm_params(v_model.base_model)
            text_ref = _inputs.norm_params(t_model.base_model, visual=False)

        n = len(items)
        report.tensors("images: our test transform vs CLIP's preprocess", images, ref_images, args.atol)
        report.tensors("class embeddings, all templates (zero-shot)", v_nodes, v_lp.classification_weight.t(),
                       args.atol)
        report.tensors("projection (reference in fp16)", projection, v_lp.projection_matrix, 1e-3)
        report.tensors("CG scores on one graph ({} nodes)".format(points.shape[0]), scores_ours,
                       torch.from_numpy(np.asarray(scores_ref)), 1e-8)
        report.agreement("pseudo-labels ReCLIP-T ({} images)".format(n), ours.t_pseudo.cpu(),
                         torch.tensor([int(t_lp.pseudo_labels[i]) for i in range(n)]))
        report.agreement("pseudo-labels ReCLIP-V ({} images)".format(n), ours.v_pseudo.cpu(),
                         torch.tensor([int(v_lp.pseudo_labels[i]) for i in range(n)]))
        report.tensors("ReCLIP-V centroids (its classifier)", ours.model.v_classifier,
                       torch.as_tensor(v_model.classification_weight).t(), 1e-4)
        for name, mine, theirs in (("visual norms (ReCLIP-V)", visual_ours, visual_ref),
                                   ("text LayerNorms (ReCLIP-T)", text_ours, text_ref)):
            _inputs.compare_step(report, name, mine, theirs, args.atol)
        report.tensors("ReCLIP-T nodes after the epoch", ours.model.t_nodes, t_lp.centriods, 1e-4)
        report.tensors("test logits, ensemble", test_ours, test_ref, _inputs.round_tol(args.atol * c.LOGIT_SCALE))
        report.agreement("test predictions", test_ours.argmax(1), test_ref.argmax(1))
        recipe = _recipe()
        for name, mine, theirs in [("batch size", recipe["batch"], defaults.bs),
                                   ("kNN k", recipe["k"], defaults.neighbor_size),
                                   ("alpha", recipe["alpha"], defaults.alpha),
                                   ("projection cut", recipe["cut_dim"], defaults.cut_dim),
                                   ("lr, image branch", recipe["lr"], defaults.lrv),
                                   ("lr, text branch", recipe["lr_text"], defaults.lrt),
                                   ("weight decay", recipe["wd"], defaults.weight_decay)]:
            report.scalar("recipe: " + name, mine, theirs, 0)
        _inputs.describe_inputs(ours, args, "{} train images (one epoch, one batch), {} test images".format(
            n, len(test_images)))
    return report.finish(args.json)


def _cg_diffusion(lp, models, y, graph, c):
    """The reference's ``cg_diffusion`` on ``graph`` (dense), SciPy's tolerance keyword shimmed."""
    with _inputs.patched((models, "s_linalg", types.SimpleNamespace(cg=_cg_with_tol(models.s_linalg.cg)))):
        return lp.cg_diffusion(y.numpy().T, graph.to_dense().numpy(), c.ALPHA, maxiter=c.CG_ITERS, tol=c.CG_TOL)


def _recipe():
    """Our ``configs/trainers/ReCLIP/vit_b32.yaml`` values (not the run's: a synthetic override may differ)."""
    import yaml

    with open(osp.join(_inputs.REPO, "configs", "trainers", "ReCLIP", "vit_b32.yaml")) as f:
        cfg = yaml.safe_load(f)
    r = cfg["TRAINER"]["RECLIP"]
    return {"batch": cfg["DATALOADER"]["TRAIN_X"]["BATCH_SIZE"], "k": r["N_NEIGHBORS"], "alpha": r["ALPHA"],
            "cut_dim": r["CUT_DIM"], "lr": cfg["OPTIM"]["LR"], "lr_text": r["LR_TEXT"],
            "wd": cfg["OPTIM"]["WEIGHT_DECAY"]}


if __name__ == "__main__":
    run(main)
