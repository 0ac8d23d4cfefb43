"""What a sweep costs before it is run: ``python -m tools.run_jobs --plan --datasets ... --methods ... --seeds ...``.

For each run (dataset x method x seed; the seeds of one pair cost the same) it prints the train images, the
epochs, the image views per train image and step, their product, the other image passes (evaluations,
pseudo-label and prototype passes) and the estimated GPU-hours, then the totals. Everything is read from the
run's merged config (the method config of ``--cfg``, its per-dataset override, the ``-- KEY VALUE`` pairs) and
from the published split sizes (``tools/verify_datasets.py: PUBLISHED``, the table of DATASETS.md).

The estimate converts views into time with the throughputs ``tools/benchmark.py`` measured for ViT-B/32 on
one H200 (``REFERENCE``, docs/speed.md) and scales them to the config's backbone by the ratio of image-tower
forward FLOPs (``tools/backbone_cost.py: FIGURES``). It says which figure each method used. The benchmark ran
bf16 with ``TRAINER.COMPILE True`` at batch 256: runs in the recipes' fp32 at batch 64 take longer (not
measured), and larger backbones usually reach a better FLOP rate than ViT-B/32, so their scaled figures err high.
"""
import contextlib
import io
import math
import os.path as osp
from collections import OrderedDict

from fairclip.toolbox.errors import UserError

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
REFERENCE_BACKBONE = "ViT-B/32"
# images/s, measured on one H200 with ViT-B/32, bf16 autocast, batch 256 (docs/speed.md, "Numbers")
REFERENCE = {
    "eval": (28398, "zero-shot evaluation end to end, TRAINER.COMPILE True (benchmark row `zeroshot`)"),
    "fair": (2055, "FAIR step end to end with its 10 views, TRAINER.COMPILE True (`fair_step`)"),
    "must": (4409, "MUST-style step end to end, eager: no compiled end-to-end figure was measured (`must_step`)"),
}
FAIR_REFERENCE_VIEWS = 10  # weak + strong + 8 crops: the views of the measured FAIR step
# The FAIR step's FLOP rate (ViT-B/32): 9 no-grad forwards + 1 forward and 1 backward to the inputs per image.
FAIR_STEP_FORWARDS = 11
DECODE_RATE = 1068  # images/s decoded into the cache by 12 processes (benchmark row `decode_once`)


def train_size(key, published):
    """``(train images, exact?)`` of a dataset's train split from the published sizes."""
    pub = published.get(key)
    if not pub:
        raise UserError("no published split size for dataset {!r}; tools/verify_datasets.py PUBLISHED lists those "
                        "the planner knows".format(key))
    if "train" in pub:
        return pub["train"], True
    if "trainval" in pub:  # our CUB split: about 20 % of each class's train+val is val
        return int(round(0.8 * pub["trainval"])), False
    return int(round(0.8 * pub["trainval_max"])), False  # Birdsnap: an upper bound (Flickr images go missing)


def test_size(key, published):
    pub = published[key]
    return pub.get("test", pub.get("test_max"))


def run_config(dataset, trainer, cfg_name, opts):
    """The merged config of one run, as train.py would build it (no data read)."""
    from fairclip.config import get_cfg, merge_config_file, yacs_message

    cfg = get_cfg()
    with contextlib.redirect_stdout(io.StringIO()):  # the merge announces per-dataset overrides
        merge_config_file(cfg, osp.join(REPO, "configs", "datasets", dataset + ".yaml"), "dataset config file")
        merge_config_file(cfg, osp.join(REPO, "configs", "trainers", trainer, cfg_name + ".yaml"), "method config file")
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, AssertionError, ValueError) as exc:
        raise UserError("override after --: {}".format(yacs_message(exc))) from exc
    return cfg


def backbone_scale(cfg):
    """``(backbone name, image-forward FLOP ratio to ViT-B/32, text FLOP ratio)``."""
    from fairclip.tools.backbone_cost import FIGURES

    name = cfg.MODEL.BACKBONE.NAME
    if name not in FIGURES:
        raise UserError("MODEL.BACKBONE.NAME={!r}: the planner has FLOP figures for {} only (tools/backbone_cost.py)".format(
            name, ", ".join(FIGURES)))
    ref = FIGURES[REFERENCE_BACKBONE]
    return name, FIGURES[name]["image_gflops"] / ref["image_gflops"], FIGURES[name]["text_gflops"]


def run_cost(cfg, trainer, n_train, n_test, n_classes):
    """One run's views and seconds (on the reference GPU, scaled to the config's backbone)."""
    from fairclip.tools.backbone_cost import FIGURES

    _, scale, text_gflops = backbone_scale(cfg)
    eval_rate = REFERENCE["eval"][0] / scale
    epochs = int(cfg.OPTIM.MAX_EPOCH)
    if int(cfg.DATASET.NUM_SHOTS) >= 1:
        n_train = min(n_train, int(cfg.DATASET.NUM_SHOTS) * n_classes)
    node = cfg.TRAINER.get(trainer)
    eval_passes = 1 + (epochs - 1 if node is not None and node.get("EVAL_EACH_EPOCH", False) else 0)
    cost = {"train_images": n_train, "epochs": epochs, "views": 0, "train_views": 0, "other_views": 0,
            "seconds": 0.0, "figure": "eval"}
    test_views = 1
    if trainer in ("ZeroshotCLIP", "CuPL"):
        cost.update(train_images=0, epochs=0)
    elif trainer == "WCA":
        cost.update(train_images=0, epochs=0)
        test_views = 1 + int(cfg.TRAINER.WCA.N_CROPS)
    elif trainer == "FAIR":
        c = cfg.TRAINER.FAIR
        views = 2 + int(c.N_CROPS)
        rate = REFERENCE["fair"][0] / scale * FAIR_REFERENCE_VIEWS / views
        cost.update(views=views, train_views=n_train * epochs * views, seconds=n_train * epochs / rate, figure="fair")
        test_views = 1 + (int(c.N_CROPS) if c.TEST_LAS else 0)
    elif trainer in ("MUST", "DPA"):
        rate = REFERENCE["must"][0] / scale
        cost.update(views=2, train_views=n_train * epochs * 2, seconds=n_train * epochs / rate, figure="must")
        if trainer == "DPA":  # the initial image prototypes: one no-grad pass over the train split
            cost["other_views"] += n_train
            cost["seconds"] += n_train / eval_rate
    elif trainer == "LaFTer":
        # MUST's step shape (a no-grad weak view + a strong view with gradient), the strong view longer by the
        # visual prompts; the text classifier's steps are on text embeddings only (negligible)
        from fairclip.tools.backbone_cost import prompted_view_cost

        prompted = prompted_view_cost(cfg.MODEL.BACKBONE.NAME, cfg.TRAINER.LAFTER.N_PROMPTS)
        rate = REFERENCE["must"][0] / scale * 2.0 / (1.0 + prompted)
        cost.update(views=2, train_views=n_train * epochs * 2, seconds=n_train * epochs / rate, figure="must")
    elif trainer == "ReCLIP":
        # per epoch: a no-grad pass over the train split (two views the first epoch: the frozen features are
        # cached), then one view with gradient per image (3 of a MUST step's 4 forward-equivalents) and every
        # class's prompt through the text tower, forward and backward, per step
        steps = math.ceil(n_train / int(cfg.DATALOADER.TRAIN_X.BATCH_SIZE)) * epochs
        text_gflop = steps * n_classes * 3 * text_gflops
        fair_rate = REFERENCE["fair"][0] * FAIR_STEP_FORWARDS * FIGURES[REFERENCE_BACKBONE]["image_gflops"]
        rate = REFERENCE["must"][0] / scale * 4.0 / 3.0
        cost.update(views=1, train_views=n_train * epochs, figure="must")
        cost["other_views"] += n_train * (epochs + 1)
        cost["seconds"] = n_train * epochs / rate + n_train * (epochs + 1) / eval_rate + text_gflop / fair_rate
    elif trainer == "UPL":
        c = cfg.TRAINER.UPL
        selected = min(n_train, int(c.TOPK) * n_classes) if int(c.TOPK) > 0 else n_train
        steps = math.ceil(selected / int(cfg.DATALOADER.TRAIN_X.BATCH_SIZE)) * epochs
        # the learned prompts: every class's prompt(s) through the text tower, forward and backward to the inputs
        text_gflop = steps * n_classes * int(c.ENSEMBLE) * 2 * text_gflops
        fair_rate = REFERENCE["fair"][0] * FAIR_STEP_FORWARDS * FIGURES[REFERENCE_BACKBONE]["image_gflops"]
        cost.update(train_images=selected, views=1, train_views=selected * epochs, figure="upl")
        cost["other_views"] += n_train  # the zero-shot pseudo-label pass
        cost["seconds"] = (selected * epochs + n_train) / eval_rate + text_gflop / fair_rate
    else:
        raise UserError("the planner has no cost model for trainer {}".format(trainer))
    cost["other_views"] += eval_passes * n_test * test_views
    cost["seconds"] += eval_passes * n_test * test_views / eval_rate
    return cost


FIGURE_NOTES = {
    "eval": "evaluation rate only",
    "fair": "FAIR step rate",
    "must": "MUST step rate",
    "upl": "evaluation rate + text FLOPs at the FAIR step's FLOP rate",
}


def plan(jobs, cfg_name, opts):
    """Rows (one per dataset x method, with its seeds) and the backbone of a sweep."""
    from fairclip.tools.verify_datasets import PUBLISHED

    pairs = OrderedDict()
    for job in jobs:
        pairs.setdefault((job["dataset"], job["method"], job["trainer"]), []).append(job)
    rows, backbone = [], None
    for (dataset, method, trainer), runs in pairs.items():
        cfg = run_config(dataset, trainer, cfg_name, opts)
        backbone = backbone_scale(cfg)
        n_train, exact = train_size(dataset, PUBLISHED)
        n_classes = PUBLISHED[dataset]["classes"]
        cost = run_cost(cfg, trainer, n_train, test_size(dataset, PUBLISHED), n_classes)
        rows.append(dict(cost, dataset=dataset, method=method, trainer=trainer, runs=len(runs), exact=exact,
                         decode_images=n_train + test_size(dataset, PUBLISHED),
                         todo=sum(not j["finished"] for j in runs), backbone=backbone[0]))
    return rows


def _n(x):
    return "{:,}".format(int(round(x)))


def format_plan(rows, cfg_name):
    from tabulate import tabulate

    from fairclip.tools.backbone_cost import FIGURES

    lines = []
    backbones = sorted({r["backbone"] for r in rows})
    runs = sum(r["runs"] for r in rows)
    datasets = list(OrderedDict.fromkeys(r["dataset"] for r in rows))
    methods = list(OrderedDict.fromkeys(r["method"] for r in rows))
    lines.append("Sweep plan: {} datasets x {} methods = {} runs with config {} ({})".format(
        len(datasets), len(methods), runs, cfg_name, ", ".join(backbones)))
    lines.append("Throughput used (one H200, bf16 autocast, batch 256, CLIP {}; docs/speed.md):".format(REFERENCE_BACKBONE))
    for key in ("eval", "fair", "must"):
        lines.append("  {:>6,} images/s: {}".format(REFERENCE[key][0], REFERENCE[key][1]))
    lines.append("  UPL's prompt steps: 2 x text-tower GFLOPs per class prompt at the FAIR step's FLOP rate "
                 "({:,} images/s x {} forwards x {} GFLOPs)".format(REFERENCE["fair"][0], FAIR_STEP_FORWARDS,
                                                                  FIGURES[REFERENCE_BACKBONE]["image_gflops"]))
    for name in backbones:
        fig = FIGURES[name]
        lines.append("Backbone scale: {} image forward {} GFLOPs vs {} {} GFLOPs: rates / {:.2f}; text tower {} GFLOPs "
                     "per prompt (tools/backbone_cost.py)".format(
                         name, fig["image_gflops"], REFERENCE_BACKBONE, FIGURES[REFERENCE_BACKBONE]["image_gflops"],
                         fig["image_gflops"] / FIGURES[REFERENCE_BACKBONE]["image_gflops"], fig["text_gflops"]))
    lines.append("Views = image forwards per train image and step; other image-views = evaluations (each epoch when "
                 "EVAL_EACH_EPOCH), pseudo-label and prototype passes. '~' = approximate split size.")
    table = [[r["dataset"], r["method"], r["runs"], ("~" if not r["exact"] and r["train_images"] else "") +
              _n(r["train_images"]), r["epochs"], r["views"], _n(r["train_views"]), _n(r["other_views"]),
              "{:.1f}".format(r["seconds"] / 60), "{:.2f}".format(r["runs"] * r["seconds"] / 3600),
              FIGURE_NOTES[r["figure"]]] for r in rows]
    lines.append(tabulate(table, headers=["dataset", "method", "runs", "train images", "epochs", "views",
                                          "train image-views / run", "other image-views / run", "GPU-min / run",
                                          "GPU-h all runs", "figure used"], disable_numparse=True))
    by_method = OrderedDict()
    for r in rows:
        m = by_method.setdefault(r["method"], {"runs": 0, "views": 0, "seconds": 0.0})
        m["runs"] += r["runs"]
        m["views"] += r["runs"] * (r["train_views"] + r["other_views"])
        m["seconds"] += r["runs"] * r["seconds"]
    lines.append("")
    lines.append(tabulate([[m, v["runs"], _n(v["views"]), "{:.2f}".format(v["seconds"] / 3600)]
                           for m, v in by_method.items()],
                          headers=["method", "runs", "image-views", "GPU-hours"], disable_numparse=True))
    total = sum(r["runs"] * r["seconds"] for r in rows) / 3600
    todo = sum(r["todo"] * r["seconds"] for r in rows) / 3600
    lines.append("")
    lines.append("Total: {} runs, {} image-views, {:.1f} GPU-hours on one H200-class GPU ({:.1f} GPU-hours for the "
                 "{} runs not finished yet).".format(
                     runs, _n(sum(r["runs"] * (r["train_views"] + r["other_views"]) for r in rows)), total, todo,
                     sum(r["todo"] for r in rows)))
    decode = sum(OrderedDict((r["dataset"], r["decode_images"]) for r in rows).values())
    lines.append("Not counted: process start-up, text encoding, and decoding each dataset's train and test images "
                 "once into the cache on GPU runs ({} images; at the benchmark's {:,} images/s with 12 processes "
                 "about {:.1f} hours, shared by every later run of the dataset).".format(
                     _n(decode), DECODE_RATE, decode / DECODE_RATE / 3600))
    return "\n".join(lines)


def print_plan(jobs, cfg_name, opts):
    print(format_plan(plan(jobs, cfg_name, opts), cfg_name))
    return 0
