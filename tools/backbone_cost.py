"""What each CLIP backbone costs: GFLOPs of a forward pass and the memory a training step holds, per image.

    python -m tools.backbone_cost                 # the stored figures and the memory table of docs/speed.md
    python -m tools.backbone_cost --measure       # recompute the figures (CPU; minutes per backbone, and
                                                  # ViT-L/14@336px needs about 16 GB of host memory)

``ARCHITECTURES`` lists OpenAI CLIP's published shapes (the dimensions ``clip.model.build_model`` reads off
each checkpoint). ``FIGURES`` stores what ``--measure`` found for each:

* ``image_gflops`` / ``text_gflops``: one image at the input resolution / one 77-token prompt through the
  image / text tower, counted by ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (a
  multiply-add counts 2);
* ``saved_mb`` (fp32, bf16): what autograd keeps per image for the backward of a step that trains only the
  image tower's normalisation layers (FAIR, MUST, DPA), measured with saved-tensor hooks on CPU as the
  difference between batches of 2 and 1 (so bf16's per-step weight copies are not counted per image);
* ``text_saved_mb``: the same for one prompt whose input embeddings train (UPL's learned context);
* ``nograd_peak_mb``: the peak of live tensors per image in a no-grad forward (evaluation, the no-grad views);
* ``params_m``: parameters of the whole CLIP (both towers stay on the GPU), ``visual_params_m``.

``estimate_peak_gib`` turns them into the peak GPU memory of one run (docs/speed.md states the rule and
checks it against the benchmark's measured peaks); ``tools.run_jobs --plan`` uses the GFLOP ratios.
"""
import argparse
import json
import sys
import warnings
import weakref

import torch
import torch.nn as nn

# name -> clip.model.CLIP arguments (besides context_length 77 and vocab_size 49408)
ARCHITECTURES = {
    "RN50": dict(embed_dim=1024, image_resolution=224, vision_layers=(3, 4, 6, 3), vision_width=64,
                 vision_patch_size=None, transformer_width=512, transformer_heads=8, transformer_layers=12),
    "ViT-B/32": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                     transformer_width=512, transformer_heads=8, transformer_layers=12),
    "ViT-B/16": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
                     transformer_width=512, transformer_heads=8, transformer_layers=12),
    "ViT-L/14": dict(embed_dim=768, image_resolution=224, vision_layers=24, vision_width=1024, vision_patch_size=14,
                     transformer_width=768, transformer_heads=12, transformer_layers=12),
    "ViT-L/14@336px": dict(embed_dim=768, image_resolution=336, vision_layers=24, vision_width=1024,
                           vision_patch_size=14, transformer_width=768, transformer_heads=12, transformer_layers=12),
}

# What `python -m tools.backbone_cost --measure` printed (torch 2.14, CPU; MB = 2**20 bytes).
FIGURES = {
    "RN50": {"image_gflops": 12.22, "text_gflops": 5.96, "saved_mb": {"fp32": 94.3, "bf16": 47.2},
             "text_saved_mb": {"fp32": 25.5, "bf16": 14.6}, "nograd_peak_mb": {"fp32": 10.7, "bf16": 5.4},
             "params_m": 102.0, "visual_params_m": 38.3},
    "ViT-B/32": {"image_gflops": 8.82, "text_gflops": 5.96, "saved_mb": {"fp32": 24.9, "bf16": 14.2},
                 "text_saved_mb": {"fp32": 25.5, "bf16": 14.6}, "nograd_peak_mb": {"fp32": 1.3, "bf16": 0.7},
                 "params_m": 151.3, "visual_params_m": 87.8},
    "ViT-B/16": {"image_gflops": 35.13, "text_gflops": 5.96, "saved_mb": {"fp32": 98.3, "bf16": 56.1},
                 "text_saved_mb": {"fp32": 25.5, "bf16": 14.6}, "nograd_peak_mb": {"fp32": 8.8, "bf16": 4.4},
                 "params_m": 149.6, "visual_params_m": 86.2},
    "ViT-L/14": {"image_gflops": 162.03, "text_gflops": 13.30, "saved_mb": {"fp32": 339.8, "bf16": 194.2},
                 "text_saved_mb": {"fp32": 38.2, "bf16": 21.9}, "nograd_peak_mb": {"fp32": 15.1, "bf16": 7.5},
                 "params_m": 427.6, "visual_params_m": 304.0},
    "ViT-L/14@336px": {"image_gflops": 381.92, "text_gflops": 13.30, "saved_mb": {"fp32": 762.9, "bf16": 436.1},
                       "text_saved_mb": {"fp32": 38.2, "bf16": 21.9}, "nograd_peak_mb": {"fp32": 36.1, "bf16": 18.0},
                       "params_m": 427.9, "visual_params_m": 304.3},
}


def build(name, device="cpu", seed=0):
    """A randomly initialised CLIP of architecture ``name`` (fp32; on ``device``, "meta" for no storage)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # openai-clip imports pkg_resources
        from clip.model import CLIP
    torch.manual_seed(seed)
    with torch.device(device):
        return CLIP(context_length=77, vocab_size=49408, **ARCHITECTURES[name]).float().eval()


def count_gflops(name):
    """``(image, text)`` forward GFLOPs of one image / one prompt (meta device: nothing is computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build(name, "meta")
    res = ARCHITECTURES[name]["image_resolution"]
    with torch.device("meta"):
        image, text = torch.zeros(1, 3, res, res), torch.zeros(1, 77, dtype=torch.long)
    counts = []
    for fn, arg in ((model.encode_image, image), (model.encode_text, text)):
        with FlopCounterMode(display=False) as counter:
            fn(arg)
        counts.append(counter.get_total_flops() / 1e9)
    return tuple(counts)


def _norms_trainable(model):
    for p in model.parameters():
        p.requires_grad_(False)
    for m in model.visual.modules():
        if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            m.eval()  # BatchNorm: frozen running statistics (the toolbox's rule)
            for p in m.parameters():
                p.requires_grad_(True)


def _saved_bytes(model, run, bf16):
    """Bytes autograd saves for backward while ``run()`` executes (parameters and buffers not counted)."""
    owned = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in owned:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            run()
    return sum(saved.values())


class _LiveBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Tracks the bytes of live tensors created inside the mode and their peak."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.storages = set()

    def _release(self, ptr, nbytes):
        if ptr in self.storages:
            self.storages.discard(ptr)
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.storages:
                ptr, nbytes = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
                if ptr:
                    self.storages.add(ptr)
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._release, ptr, nbytes)
        return out


def _saved_mb_per_item(model, encode, make_input, bf16):
    """MB autograd saves per image (or prompt) for ``encode``: the difference between batches of 2 and 1 of
    ``make_input(batch)``, so what a step holds once (bf16 weight copies) is not counted."""
    saved = [_saved_bytes(model, lambda x=make_input(b): encode(x), bf16) for b in (1, 2)]
    return round((saved[1] - saved[0]) / float(2 ** 20), 1)


def _nograd_peak_bytes(model, images, bf16):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), _LiveBytes() as live:
        model.encode_image(images)
    return live.peak


def measure(name):
    """Every figure of ``FIGURES`` for architecture ``name`` (runs the model on CPU at batches 1 and 2)."""
    image_gflops, text_gflops = count_gflops(name)
    model = build(name)
    _norms_trainable(model)
    res = ARCHITECTURES[name]["image_resolution"]
    out = {"image_gflops": round(image_gflops, 2), "text_gflops": round(text_gflops, 2), "saved_mb": {},
           "text_saved_mb": {}, "nograd_peak_mb": {},
           "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
           "visual_params_m": round(sum(p.numel() for p in model.visual.parameters()) / 1e6, 1)}
    mb = float(2 ** 20)
    for prec in ("fp32", "bf16"):
        bf16 = prec == "bf16"
        out["saved_mb"][prec] = _saved_mb_per_item(
            model, model.encode_image, lambda b: torch.randn(b, 3, res, res), bf16)
        model.token_embedding.weight.requires_grad_(True)  # UPL: the prompt embeddings train
        out["text_saved_mb"][prec] = _saved_mb_per_item(
            model, model.encode_text, lambda b: torch.randint(0, 49408, (b, 77)), bf16)
        model.token_embedding.weight.requires_grad_(False)
        peaks = [_nograd_peak_bytes(model, torch.randn(b, 3, res, res), bf16) for b in (2, 4)]
        out["nograd_peak_mb"][prec] = round((peaks[1] - peaks[0]) / 2 / mb, 1)
    return out


# ---------------------------------------------------------------------------- the memory rule
# Views per training image of each trainer: (with gradient, without gradient) through the image tower.
STEP_VIEWS = {
    "FAIR": lambda cfg: (1, 1 + cfg.TRAINER.FAIR.N_CROPS),  # strong; weak + crops
    "MUST": lambda cfg: (1, 1),  # strong (student); weak (teacher)
    "DPA": lambda cfg: (1, 1),  # strong; weak
    "UPL": lambda cfg: (0, 1),  # the image tower runs without gradient; the prompts train through the text tower
    # strong view through the prompted tower (its sequence is longer by the prompts); weak view (teacher)
    "LaFTer": lambda cfg: (prompted_view_cost(cfg.MODEL.BACKBONE.NAME, cfg.TRAINER.LAFTER.N_PROMPTS), 1),
    # the test view with gradient (ReCLIP-V); ReCLIP-T's image features are cached; its prompts train the text tower
    "ReCLIP": lambda cfg: (1, 0),
}
# Trainers whose step runs the text tower with gradient, and the prompts per class it runs.
TEXT_STEP_PROMPTS = {"UPL": lambda cfg: int(cfg.TRAINER.UPL.ENSEMBLE), "ReCLIP": lambda cfg: 1}


def prompted_view_cost(backbone, n_prompts):
    """One view of a ViT whose sequence carries ``n_prompts`` extra tokens, in plain views: the activations
    a step saves grow about linearly with the sequence (a ResNet has no prompts)."""
    arch = ARCHITECTURES.get(backbone)
    if not arch or not arch["vision_patch_size"] or not n_prompts:
        return 1.0
    tokens = (arch["image_resolution"] // arch["vision_patch_size"]) ** 2 + 1
    return (tokens + int(n_prompts)) / tokens


def estimate_peak_gib(backbone, trainer, batch, prec="fp32", views=None, test_batch=256, test_views=1,
                      num_classes=100, prompts=1, input_size=None):
    """Estimated peak of ``torch.cuda.max_memory_allocated`` (GiB) for one run.

    weights (all of CLIP in fp32, plus bf16 copies of the image tower under bf16 autocast)
    + the input views of a batch (fp32)
    + max(what the gradient views save for backward, the live tensors of the no-grad views)
    + UPL: what the text tower saves for ``num_classes x prompts`` prompts with gradient.
    Evaluation (``test_batch x test_views`` no-grad views) is a separate phase: the peak is the larger one.
    """
    fig = FIGURES[backbone]
    side = input_size or ARCHITECTURES[backbone]["image_resolution"]
    mb = 1.0 / 1024
    weights = fig["params_m"] * 1e6 * 4 / 2 ** 30
    if prec == "bf16":
        weights += fig["visual_params_m"] * 1e6 * 2 / 2 ** 30
    view_gib = 3 * side * side * 4 / 2 ** 30
    evaluation = weights + test_batch * test_views * (view_gib + fig["nograd_peak_mb"][prec] * mb)
    if views is None:
        return evaluation
    n_grad, n_nograd = views
    train = weights + batch * (n_grad + n_nograd) * view_gib
    train += max(batch * n_grad * fig["saved_mb"][prec] * mb, batch * n_nograd * fig["nograd_peak_mb"][prec] * mb)
    if trainer in TEXT_STEP_PROMPTS:  # UPL, ReCLIP: every class's prompt(s) through the text tower with gradient
        train += num_classes * prompts * fig["text_saved_mb"][prec] * mb
    return max(train, evaluation)


def largest_batch(backbone, trainer, views, prec="fp32", budget_gib=72.0, **kwargs):
    """The largest power-of-two batch whose estimate stays within ``budget_gib`` (80 GB less headroom)."""
    batch = 1
    while batch <= 1 << 14 and estimate_peak_gib(backbone, trainer, batch * 2, prec, views, **kwargs) <= budget_gib:
        batch *= 2
    return batch


TABLE_CLASSES = 500  # UPL's prompts: the most classes of the 13 benchmarks (Birdsnap)


def config_memory(trainer, cfg_name, num_classes=TABLE_CLASSES):
    """``{batch, fp32, bf16, largest}`` for ``configs/trainers/<trainer>/<cfg_name>.yaml``: its train batch (or
    test batch for the training-free methods), the estimated peak GiB in fp32 and bf16, and the largest
    power-of-two batch whose fp32 estimate stays within 72 GiB (None for the training-free methods and UPL)."""
    import os.path as osp

    from fairclip.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), "configs", "trainers", trainer,
                                 cfg_name + ".yaml"))
    backbone = cfg.MODEL.BACKBONE.NAME
    test_views = 1 + cfg.TRAINER.WCA.N_CROPS if trainer == "WCA" else 1
    kwargs = dict(test_batch=cfg.DATALOADER.TEST.BATCH_SIZE, test_views=test_views, num_classes=num_classes,
                  input_size=max(cfg.INPUT.SIZE))
    views = STEP_VIEWS[trainer](cfg) if trainer in STEP_VIEWS else None
    if trainer in TEXT_STEP_PROMPTS:
        kwargs["prompts"] = TEXT_STEP_PROMPTS[trainer](cfg)
    batch = cfg.DATALOADER.TRAIN_X.BATCH_SIZE if views else cfg.DATALOADER.TEST.BATCH_SIZE
    return {"backbone": backbone, "batch": batch, "test_views": test_views,
            "fp32": estimate_peak_gib(backbone, trainer, batch, "fp32", views, **kwargs),
            "bf16": estimate_peak_gib(backbone, trainer, batch, "bf16", views, **kwargs),
            # UPL: the image batch runs without gradient; its memory is the text side (all classes each step)
            "largest": largest_batch(backbone, trainer, views, "fp32", **kwargs) if views and views[0] else None}


def memory_table(trainers=("ZeroshotCLIP", "CuPL", "WCA", "UPL", "MUST", "LaFTer", "ReCLIP", "DPA", "FAIR"),
                 cfg_names=("vit_b32", "vit_b16", "vit_l14", "rn50")):
    """The markdown table of docs/speed.md ("Memory per backbone")."""
    lines = ["| trainer | batch | " + " | ".join("`{}`".format(c) for c in cfg_names) + " |",
             "|---|---|" + "---|" * len(cfg_names)]
    for trainer in trainers:
        cells = [config_memory(trainer, c) for c in cfg_names]
        batch = "test {}{}".format(cells[0]["batch"], " x {} views".format(cells[0]["test_views"])
                                   if cells[0]["test_views"] > 1 else "") if trainer not in STEP_VIEWS \
            else "train {}".format(cells[0]["batch"])
        text = ["{:.1f} / {:.1f}{}".format(c["fp32"], c["bf16"], " (max {})".format(c["largest"]) if c["largest"] else "")
                for c in cells]
        lines.append("| {} | {} | {} |".format(trainer, batch, " | ".join(text)))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--measure", action="store_true", help="recompute the figures (CPU; minutes per backbone)")
    parser.add_argument("--backbones", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    if args.measure:
        for name in args.backbones:  # one at a time, so a long measurement shows progress
            print(json.dumps({name: measure(name)}), flush=True)
        return 0
    json.dump({k: FIGURES[k] for k in args.backbones}, sys.stdout, indent=1)
    print("\n\nEstimated peak GPU memory, GiB fp32 / bf16 (max: the largest power-of-two train batch within 72 GiB "
          "in fp32; UPL at {} classes):\n".format(TABLE_CLASSES))
    print(memory_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
