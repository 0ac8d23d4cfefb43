"""FAIR's ablation: the plan of variants (for scripts/fair/ablate.sh), then the table and the per-epoch plot.

    python -m tools.ablation plan DATASET --out-dir ABL [--variants FILE] [--only NAME ...] [--cfg vit_b32]
                                  [KEY VALUE ...]
    python -m tools.ablation table DATASET --out-dir ABL [--out PREFIX]

``plan`` reads the variants file (default ``configs/trainers/FAIR/ablations.yaml``: ``name: {KEY: VALUE}``
per variant), checks every key against the run configuration (FAIR's method config, the dataset's
per-dataset override, then the trailing KEY VALUE pairs that every variant shares), writes
``ABL/plan.json`` and prints one shell-quoted line per variant: ``run NAME KEY VALUE ...`` or, for a
variant whose configuration equals the reference's (``full``: FAIR's defaults), ``same NAME full``, which
is not run again. Runs live in ``ABL/<variant>/`` (the OUTPUT of ``scripts/fair/main.sh``) and record their
variant in results.json (``protocol.variant``).

``table`` reads ``ABL/plan.json`` and the variants' results.json files and prints (and with ``--out``
writes PREFIX.md and PREFIX.png) the ablation table: per variant the mean ± population std over seeds of
the final test accuracy, its difference to the reference, the final epoch's pseudo-label accuracy (a
diagnostic that reads the train labels) and mean pseudo-label weight; the PNG shows the pseudo-label and
test accuracy per epoch for each variant (mean over seeds).
"""
import argparse
import contextlib
import copy
import json
import os
import os.path as osp
import re
import shlex
import sys
from collections import OrderedDict

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_VARIANTS = osp.join(REPO, "configs", "trainers", "FAIR", "ablations.yaml")
REFERENCE = "full"
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")

from fairclip.toolbox.errors import UserError, report_error  # noqa: E402
from fairclip.toolbox.io import atomic_write_json, atomic_write_text  # noqa: E402


# ---------------------------------------------------------------------------- the variants file
def _value_text(value):
    """A YAML value as the KEY VALUE text train.py's command line takes."""
    if isinstance(value, (list, tuple)):
        return "({})".format(", ".join(_value_text(v) for v in value) + ("," if len(value) == 1 else ""))
    return str(value)


def read_variants(path):
    """``OrderedDict(name -> [(KEY, VALUE text), ...])`` from the variants file, with one-line errors."""
    import yaml

    if not osp.isfile(path):
        raise UserError("variants file {} does not exist; give one with VARIANTS_FILE (format: "
                        "configs/trainers/FAIR/ablations.yaml)".format(path))
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = " (line {})".format(mark.line + 1) if mark is not None else ""
        raise UserError("variants file {} is not valid YAML{}: {}; fix the file".format(
            path, where, getattr(exc, "problem", None) or exc)) from None
    if not isinstance(data, dict) or not data:
        raise UserError("variants file {} must map variant names to {{KEY: VALUE}} sets, e.g. 'full: {{}}'".format(path))
    variants = OrderedDict()
    for name, keys in data.items():
        name = str(name)
        if not NAME_RE.match(name):
            raise UserError("variants file {}: variant name {!r} may use only letters, digits, '_', '-' and '.'"
                            .format(path, name))
        if keys is None:
            keys = {}
        if not isinstance(keys, dict):
            raise UserError("variants file {}: variant '{}' must be a mapping {{KEY: VALUE}}, got {!r}".format(
                path, name, keys))
        pairs = []
        for key, value in keys.items():
            if not isinstance(key, str) or not re.match(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$", key):
                raise UserError("variants file {}: variant '{}' has key {!r}; keys are config keys such as "
                                "TRAINER.FAIR.GAMMA".format(path, name, key))
            if isinstance(value, dict) or value is None:
                raise UserError("variants file {}: variant '{}' key {} needs a plain value, got {!r}".format(
                    path, name, key, value))
            pairs.append((key, _value_text(value)))
        variants[name] = pairs
    if REFERENCE not in variants:
        raise UserError("variants file {} has no '{}' variant (the reference of the table); add the line "
                        "'{}: {{}}'".format(path, REFERENCE, REFERENCE))
    return variants


# ---------------------------------------------------------------------------- the plan
def base_config(dataset, cfg_name, opts):
    """The configuration every variant starts from: FAIR's method config (with the dataset's per-dataset
    override) and the shared KEY VALUE pairs, as ``scripts/fair/main.sh`` builds it."""
    from fairclip.config import get_cfg, merge_config_file, yacs_message

    dataset_cfg = osp.join(REPO, "configs", "datasets", dataset + ".yaml")
    method_cfg = osp.join(REPO, "configs", "trainers", "FAIR", cfg_name + ".yaml")
    if not osp.isfile(dataset_cfg):
        raise UserError("unknown dataset '{}': {} does not exist".format(dataset, dataset_cfg))
    cfg = get_cfg()
    merge_config_file(cfg, dataset_cfg, "dataset config file")
    merge_config_file(cfg, method_cfg, "method config file")
    if len(opts) % 2:
        raise UserError("the shared overrides must be KEY VALUE pairs, got an odd number: {}".format(" ".join(opts)))
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, AssertionError, ValueError) as exc:
        raise UserError("shared override: {}".format(yacs_message(exc))) from exc
    return cfg


def make_plan(variants, base, path):
    """``{name: {"keys": [KEY, VALUE, ...], "same_as": an earlier variant or None}}``: a variant whose
    merged configuration equals an earlier one's (the reference's first) is not run again."""
    from fairclip.config import flat_config, yacs_message

    merged = {}
    for name, pairs in variants.items():
        cfg = copy.deepcopy(base)
        try:
            cfg.merge_from_list([x for pair in pairs for x in pair])
        except (KeyError, AssertionError, ValueError) as exc:
            raise UserError("variants file {}: variant '{}': {}".format(path, name, yacs_message(exc))) from exc
        merged[name] = flat_config(cfg)
    plan = OrderedDict()
    order = [REFERENCE] + [n for n in variants if n != REFERENCE]
    for name, pairs in variants.items():
        earlier = order[:order.index(name)]
        same = next((other for other in earlier if merged[other] == merged[name]), None)
        plan[name] = {"keys": [x for pair in pairs for x in pair], "same_as": same}
    return plan


def cmd_plan(args):
    variants = read_variants(args.variants)
    if args.only:
        unknown = [n for n in args.only if n not in variants]
        if unknown:
            raise UserError("VARIANTS names {} not in {} (it has: {})".format(
                ", ".join(unknown), args.variants, ", ".join(variants)))
        keep = set(args.only) | {REFERENCE}  # the reference is always part of the table
        variants = OrderedDict((n, p) for n, p in variants.items() if n in keep)
    with contextlib.redirect_stdout(sys.stderr):  # config merging prints; stdout is the plan
        base = base_config(args.dataset, args.cfg, args.opts)
    plan = make_plan(variants, base, args.variants)
    os.makedirs(args.out_dir, exist_ok=True)
    atomic_write_json({"dataset": args.dataset, "variants_file": osp.abspath(args.variants), "shared": args.opts,
                       "variants": plan}, osp.join(args.out_dir, "plan.json"))
    for name, item in plan.items():
        if item["same_as"]:
            print(shlex.join(["same", name, item["same_as"]]))
        else:
            print(shlex.join(["run", name] + item["keys"]))
    return 0


# ---------------------------------------------------------------------------- the table
def _runs_of(folder, dataset):
    from fairclip.tools.results_table import find_results, load_run

    if not osp.isdir(folder):
        return []
    runs = []
    for path in find_results([folder]):
        run = load_run(path)
        if run["dataset"] == dataset and run["trainer"] == "FAIR":
            run["variant"] = run["protocol"].get("variant", "")
            runs.append(run)
    return sorted(runs, key=lambda r: r["seed"])


def _last(run, key):
    for rec in reversed(run["history"]):
        if isinstance(rec, dict) and isinstance(rec.get(key), (int, float)):
            return float(rec[key])
    return None


def _mean_std(values):
    from fairclip.tools.results_table import spread

    values = [v for v in values if v is not None]
    return spread(values, "population") if values else (None, None)


def _fmt(mean, std=None, signed=False):
    if mean is None:
        return "-"
    text = ("{:+.2f}" if signed else "{:.2f}").format(mean)
    return text + (" ± {:.2f}".format(std) if std is not None else "")


def _change(keys):
    pairs = ["{} {}".format(k.replace("TRAINER.FAIR.", ""), v) for k, v in zip(keys[::2], keys[1::2])]
    return ", ".join(pairs) or "(defaults)"


def build_table(plan, out_dir, dataset):
    """Rows (one per variant, in the plan's order) as dicts, and the runs per variant."""
    runs = OrderedDict()
    for name, item in plan["variants"].items():
        runs[name] = _runs_of(osp.join(out_dir, item["same_as"] or name), dataset)
    ref = runs.get(REFERENCE) or []
    ref_acc = _mean_std([r["metrics"]["accuracy"] for r in ref])[0]
    rows, notes = [], []
    for name, item in plan["variants"].items():
        mine = runs[name]
        wrong = [r for r in mine if r["variant"] != (item["same_as"] or name)]
        if wrong:
            notes.append("{}: {} run(s) record variant {!r} (expected {!r}): {}".format(
                name, len(wrong), wrong[0]["variant"], item["same_as"] or name, wrong[0]["path"]))
        acc = _mean_std([r["metrics"]["accuracy"] for r in mine])
        rows.append(OrderedDict([
            ("variant", name + (" (= {})".format(item["same_as"]) if item["same_as"] else "")),
            ("change", _change(item["keys"]) if not item["same_as"] else "same configuration as " + item["same_as"]),
            ("seeds", len(mine)),
            ("test_acc", acc),
            ("delta", None if acc[0] is None or ref_acc is None or name == REFERENCE else acc[0] - ref_acc),
            ("pl_acc", _mean_std([_last(r, "diag_pseudo_label_acc") for r in mine])),
            ("las_acc", _mean_std([_last(r, "diag_las_head_acc") for r in mine])[0]),
            ("fix_acc", _mean_std([_last(r, "diag_fixed_head_acc") for r in mine])[0]),
            ("weight", _mean_std([_last(r, "mean_weight") for r in mine])[0]),
        ]))
    return rows, runs, notes


def to_markdown(rows, dataset, notes):
    from tabulate import tabulate

    body = [[r["variant"], r["change"], r["seeds"], _fmt(*r["test_acc"]), _fmt(r["delta"], signed=True),
             _fmt(*r["pl_acc"]), _fmt(r["fix_acc"]), _fmt(r["las_acc"]),
             "-" if r["weight"] is None else "{:.3f}".format(r["weight"])] for r in rows]
    header = ["variant", "change from FAIR's defaults", "seeds", "test acc (%)", "Δ to full",
              "pseudo-label acc (%)", "fixed head (%)", "LAS head (%)", "mean weight"]
    lines = ["## FAIR ablation on {}".format(dataset), "",
             "Test accuracy: mean ± population std over seeds, last epoch; Δ: difference of the means to `full` "
             "(FAIR's defaults). Last epoch on the train split: accuracy of the pseudo-labels and of each head's "
             "argmax (the fixed score, the LAS), means over seeds (diagnostics: they read the train labels, "
             "which never reach a loss), and the mean pseudo-label weight.", "",
             tabulate(body, headers=header, tablefmt="pipe", disable_numparse=True,
                      colalign=["left", "left"] + ["right"] * 7)]
    if notes:
        lines += ["", "Warnings:"] + ["- " + n for n in notes]
    return "\n".join(lines) + "\n"


def plot(runs, plan, dataset, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fairclip.tools.plots import CURVES, _accuracy_axis, _epoch_axis, _mean_curve, _save

    names = [n for n, item in plan["variants"].items() if not item["same_as"] and runs[n]]
    if not names:
        raise UserError("no finished run of any variant to plot for {}".format(dataset))
    cmap = plt.get_cmap("tab20")
    fig, axes = plt.subplots(1, len(CURVES), figsize=(13, 4.8), squeeze=False)
    for col, (key, ylabel) in enumerate(CURVES):
        ax, seen, values = axes[0][col], set(), []
        for i, name in enumerate(names):
            epochs, stats = _mean_curve(runs[name], key)
            if epochs:
                ax.plot(epochs, [s[0] for s in stats], marker="os^Dv"[i % 5], ms=4, color=cmap(i % 20),
                        lw=2.4 if name == REFERENCE else 1.2, label=name, zorder=3 if name == REFERENCE else 2)
                seen.update(epochs)
                values += [s[0] for s in stats]
        ax.set_title("{}: {}".format(dataset, ylabel), fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel.split(" (")[0] + " (%)")
        ax.grid(alpha=0.3)
        if values:
            _epoch_axis(ax, sorted(seen))
            _accuracy_axis(ax, min(values), max(values))
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle("FAIR ablation: mean over seeds per epoch", fontsize=11)
    fig.tight_layout()
    _save(fig, out)


def cmd_table(args):
    path = osp.join(args.out_dir, "plan.json")
    if not osp.isfile(path):
        raise UserError("{} does not exist; run the ablation first (bash scripts/fair/ablate.sh {})".format(
            path, args.dataset))
    with open(path) as f:
        plan = json.load(f)
    rows, runs, notes = build_table(plan, args.out_dir, args.dataset)
    if not any(r["seeds"] for r in rows):
        raise UserError("no results.json of any variant under {}; run bash scripts/fair/ablate.sh {}".format(
            args.out_dir, args.dataset))
    text = to_markdown(rows, args.dataset, notes)
    print(text)
    if args.out:
        atomic_write_text(text, args.out + ".md")
        atomic_write_json({"dataset": args.dataset, "rows": rows}, args.out + ".json")
        plot(runs, plan, args.dataset, args.out + ".png")  # prints its own "written:" line
        print("written: {0}.md, {0}.json".format(args.out))
    return 0


# ---------------------------------------------------------------------------- command line
def build_parser():
    p = argparse.ArgumentParser(prog="python -m tools.ablation", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    plan = sub.add_parser("plan", help="check the variants and print the runs (used by scripts/fair/ablate.sh)")
    plan.add_argument("dataset")
    plan.add_argument("--out-dir", required=True, help="the ablation folder (plan.json, one folder per variant)")
    plan.add_argument("--variants", default=DEFAULT_VARIANTS, help="variants file (default: %(default)s)")
    plan.add_argument("--only", type=lambda v: v.replace(",", " ").split(), default=None,
                      help="run only these variants, one quoted list (the reference, full, always runs)")
    plan.add_argument("--cfg", default="vit_b32", help="FAIR config under configs/trainers/FAIR/")
    table = sub.add_parser("table", help="the ablation table (and PNG with --out)")
    table.add_argument("dataset")
    table.add_argument("--out-dir", required=True)
    table.add_argument("--out", default="", help="write PREFIX.md, PREFIX.json and PREFIX.png")
    return p


def main(argv=None):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # plan: the trailing KEY VALUE pairs every variant shares
    bad = [x for x in extra if x.startswith("-")]
    if bad or (extra and args.command != "plan"):
        parser.error("unrecognized arguments: {}".format(" ".join(bad or extra)))
    args.opts = extra
    try:
        return cmd_plan(args) if args.command == "plan" else cmd_table(args)
    except UserError as exc:
        return report_error(exc)


if __name__ == "__main__":
    sys.exit(main())
