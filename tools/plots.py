"""Plots from results.json files (PNG, matplotlib Agg): per-class accuracy and per-epoch curves.

    python -m tools.plots per-class --dataset eurosat [--methods ZeroshotCLIP FAIR ...] RUN_DIR [...] --out per_class.png
    python -m tools.plots curves [--methods ...] [--datasets ...] RUN_DIR [...] --out curves.png

``per-class``: grouped bars, one group per class and one bar per method, the mean over seeds (error bar:
population std over seeds); horizontal bars when a dataset has many classes. ``curves``: for every
self-training run found (a per-epoch ``history``), the pseudo-label accuracy (a diagnostic: it reads the
train labels) and the test accuracy per epoch; one row per dataset, one colour per method, the mean
over seeds as a line with the per-seed range shaded. Both take ``--seeds`` and ``--cfg`` like
``tools.results_table``. Runs are read from results.json only.
"""
import argparse
import sys
from collections import OrderedDict

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from fairclip.toolbox.errors import UserError, report_error  # noqa: E402
from fairclip.toolbox.io import atomic_file  # noqa: E402
from fairclip.tools.results_table import (  # noqa: E402
    claim_run_dirs, find_results, known_methods, label_runs, load_run, method_order, select_runs, spread,
)

MANY_CLASSES = 25  # above this, per-class bars are drawn horizontally (one class per line)


def _load(args, datasets=None):
    runs = [load_run(p) for p in find_results(args.paths)]
    runs = label_runs(select_runs(runs, args.methods, datasets, args.seeds, args.cfg))
    return runs


def _colours(methods):
    """The same colour for a method in every plot: the methods of this checkout keep their tab10 slot (their
    place in ``tools/methods.py``'s order)."""
    cmap, canon = plt.get_cmap("tab10"), [m.trainer for m in known_methods()]
    spare = iter(range(len(canon), 10 * len(methods) + len(canon)))
    return {m: cmap((canon.index(m.split("/")[0]) if m.split("/")[0] in canon else next(spare)) % 10)
            for m in methods}


def _save(fig, out):
    """Write the PNG through a temporary file in the same folder, then rename (never a half-written plot)."""
    try:
        with atomic_file(out, "wb") as f:
            fig.savefig(f, dpi=120, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    print("written: {}".format(out))


# ---------------------------------------------------------------------------- per-class accuracy
def per_class_table(runs):
    """{method: {class: (mean, std, n)}} and the class order (label order of the first run)."""
    classes, values = [], OrderedDict()
    for r in runs:
        per_class = r["metrics"].get("per_class_accuracy")
        if not isinstance(per_class, dict) or not per_class:
            raise UserError("{}: metrics.per_class_accuracy is missing or empty; re-run that seed".format(r["path"]))
        for name, acc in per_class.items():
            if name not in classes:
                classes.append(name)
            values.setdefault(r["method"], OrderedDict()).setdefault(name, []).append(float(acc))
    table = OrderedDict()
    for m, by_class in values.items():
        table[m] = {c: spread(v, "population") + (len(v),) for c, v in by_class.items()}
    return table, classes


def plot_per_class(args):
    runs = _load(args, [args.dataset])
    if not runs:
        raise UserError("no results for dataset '{}' under {} (dataset keys are config stems such as eurosat; "
                        "check --methods/--seeds/--cfg)".format(args.dataset, ", ".join(args.paths)))
    methods = [m for m in method_order({r["method"] for r in runs}, args.methods)
               if any(r["method"] == m for r in runs)]
    for name in args.methods or []:
        if not any(r["trainer"] == name.split("/")[0] or r["method"] == name for r in runs):
            print("warning: no results for {} on {}".format(name, args.dataset), file=sys.stderr)
    table, classes = per_class_table([r for m in methods for r in runs if r["method"] == m])
    seeds = sorted({r["seed"] for r in runs})
    colours = _colours(methods)
    horizontal = len(classes) > MANY_CLASSES
    width = 0.8 / len(methods)
    if horizontal:
        fig, ax = plt.subplots(figsize=(8, max(4, 0.12 * len(classes) * len(methods) + 1)))
    else:
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(classes) * len(methods) + 2), 4.5))
    for i, m in enumerate(methods):
        pos = [c + (i - (len(methods) - 1) / 2) * width for c in range(len(classes))]
        stats = [table[m].get(c, (float("nan"), None, 0)) for c in classes]
        means = [s[0] for s in stats]
        errs = [s[1] or 0.0 for s in stats]
        overall = sum(x for x in means if x == x) / max(1, sum(1 for x in means if x == x))
        label = "{} (mean over classes {:.1f})".format(m, overall)
        bar = ax.barh if horizontal else ax.bar
        bar(pos, means, width, label=label, color=colours[m],
            **({"xerr": errs} if horizontal else {"yerr": errs}), error_kw={"elinewidth": 0.8, "capsize": 2})
    ticks = list(range(len(classes)))
    if horizontal:
        ax.set_yticks(ticks)
        ax.set_yticklabels(classes, fontsize=7)
        ax.set_ylim(len(classes) - 0.5, -0.5)  # first class on top, no empty margin
        ax.set_xlim(0, 100)
        ax.set_xlabel("per-class accuracy (%)")
        ax.grid(axis="x", alpha=0.3)
    else:
        ax.set_xticks(ticks)
        ax.set_xticklabels(classes, rotation=35, ha="right", fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_ylabel("per-class accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title("Per-class test accuracy on {} (mean over {} seed{}: {})".format(
        args.dataset, len(seeds), "s" if len(seeds) != 1 else "", ", ".join(map(str, seeds))))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    _save(fig, args.out)


# ---------------------------------------------------------------------------- per-epoch curves
CURVES = (("diag_pseudo_label_acc", "pseudo-label accuracy (%, diagnostic)"), ("test_acc", "test accuracy (%)"))


def _mean_curve(runs, key):
    """Epochs and per-epoch (mean, min, max) over the runs that logged ``key`` at that epoch."""
    by_epoch = OrderedDict()
    for r in runs:
        for rec in r["history"]:
            if isinstance(rec, dict) and isinstance(rec.get(key), (int, float)) and "epoch" in rec:
                by_epoch.setdefault(int(rec["epoch"]), []).append(float(rec[key]))
    epochs = sorted(by_epoch)
    return epochs, [(sum(by_epoch[e]) / len(by_epoch[e]), min(by_epoch[e]), max(by_epoch[e])) for e in epochs]


MARKERS = ("o", "s", "^", "D", "v", "P", "X")
MIN_SPAN = 10.0  # percentage points: a y axis never zooms in further (small wiggles stay small)


def _epoch_axis(ax, epochs):
    """A tick per epoch when the epochs span at most 20 (every label has room); else matplotlib's integer
    ticks, e.g. FAIR's epochs 1-15 beside UPL's single point at epoch 50."""
    if epochs[-1] - epochs[0] < 20:
        ax.set_xticks(epochs)
    else:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)


def _accuracy_axis(ax, low, high):
    pad = max(0.0, MIN_SPAN - (high - low)) / 2 + 1.0
    lo, hi = max(0.0, low - pad), min(100.0, high + pad)
    if hi - lo < MIN_SPAN:  # pushed against 0 or 100
        lo, hi = (0.0, MIN_SPAN) if lo == 0.0 else (100.0 - MIN_SPAN, 100.0)
    ax.set_ylim(lo, hi)


def plot_curves(args):
    runs = [r for r in _load(args, args.datasets) if r["history"]]
    if not runs:
        raise UserError("no run with a per-epoch history under {}; curves need methods that train ({})".format(
            ", ".join(args.paths), ", ".join(m.trainer for m in known_methods() if m.trains)))
    present = {r["dataset"] for r in runs}
    datasets = [d for d in (args.datasets or sorted(present)) if d in present]
    methods = [m for m in method_order({r["method"] for r in runs}, args.methods)
               if any(r["method"] == m for r in runs)]
    colours = _colours(methods)
    markers = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(methods)}  # tells apart overlapping points
    fig, axes = plt.subplots(len(datasets), len(CURVES), figsize=(11, 3.2 * len(datasets)), squeeze=False)
    for row, d in enumerate(datasets):
        for col, (key, ylabel) in enumerate(CURVES):
            ax, seen, low, high = axes[row][col], set(), [], []
            for m in methods:
                mine = [r for r in runs if r["dataset"] == d and r["method"] == m]
                epochs, stats = _mean_curve(mine, key)
                if not epochs:
                    continue
                ax.plot(epochs, [s[0] for s in stats], marker=markers[m], ms=5, color=colours[m], alpha=0.85,
                        label="{} ({} seed{})".format(m, len(mine), "s" if len(mine) != 1 else ""))
                ax.fill_between(epochs, [s[1] for s in stats], [s[2] for s in stats], color=colours[m], alpha=0.15)
                seen.update(epochs)
                low.append(min(s[1] for s in stats))
                high.append(max(s[2] for s in stats))
            ax.set_title("{}: {}".format(d, ylabel), fontsize=10)
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel.split(" (")[0] + " (%)")
            ax.grid(alpha=0.3)
            if not ax.lines:
                ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
                continue
            _epoch_axis(ax, sorted(seen))
            _accuracy_axis(ax, min(low), max(high))
            ax.legend(fontsize=8)
    fig.suptitle("Self-training runs: mean over seeds (shaded: min-max over seeds)", fontsize=11)
    fig.tight_layout()
    _save(fig, args.out)


# ---------------------------------------------------------------------------- command line
def build_parser():
    p = argparse.ArgumentParser(prog="python -m tools.plots", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="kind", required=True)
    subparsers = {}
    for kind, helptext in (("per-class", "per-class accuracy of methods on one dataset"),
                           ("curves", "pseudo-label and test accuracy per epoch of self-training runs")):
        s = subparsers[kind] = sub.add_parser(kind, help=helptext)
        s.add_argument("paths", nargs="*", metavar="RUN_DIR_OR_GLOB")
        s.add_argument("--out", required=True, help="PNG file to write")
        s.add_argument("--methods", nargs="+", help="trainer names (FAIR), script names (fair) or TRAINER/cfg")
        s.add_argument("--seeds", nargs="+", type=int)
        s.add_argument("--cfg", help="keep only runs of this method config")
        if kind == "per-class":
            s.add_argument("--dataset", required=True, help="dataset key, e.g. eurosat")
        else:
            s.add_argument("--datasets", nargs="+", help="dataset keys (default: every dataset with such runs)")
    return p, subparsers


def main(argv=None):
    parser, subparsers = build_parser()
    args = parser.parse_args(argv)
    claim_run_dirs(args, subparsers[args.kind])
    try:
        if not args.out.lower().endswith(".png"):
            raise UserError("--out {}: the plot is written as PNG; give a file name ending in .png".format(args.out))
        (plot_per_class if args.kind == "per-class" else plot_curves)(args)
    except UserError as exc:
        return report_error(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
