"""Merge any set of runs into the side-by-side table: methods as rows, datasets as columns + Average.

    python -m tools.results_table RUN_DIR_OR_GLOB [...] [--metric accuracy] [--format markdown|csv|both]
                                  [--out PREFIX] [--methods M ...] [--datasets D ...] [--seeds S ...]
                                  [--cfg NAME] [--std population|sample|ci95]

Every ``results.json`` under the given folders (or matching the globs) is read; logs are never parsed.
A cell is the mean ± std over the seeds of one (method, dataset); the method is the trainer, or
``trainer/cfg`` when one trainer appears with several configs. The std is the population std (ddof=0,
as CoOp's parse_test_res) unless ``--std`` says otherwise. ``--out PREFIX`` writes PREFIX.md and/or
PREFIX.csv atomically; the table is also printed. See docs/results.md for the format.
"""
import argparse
import csv
import glob
import io
import json
import math
import os
import os.path as osp
import sys
from collections import OrderedDict

from fairclip.tools import methods as method_registry
from fairclip.toolbox.errors import UserError, report_error
from fairclip.toolbox.io import atomic_write_text

METRICS = ("accuracy", "macro_f1", "mean_per_class_accuracy", "error_rate")
# Protocol fields whose disagreement inside one cell makes its mean meaningless (flagged with †).
CELL_PROTOCOL_FIELDS = ("split", "num_eval_images", "num_train_images", "num_shots", "subsample_classes",
                        "epochs", "selection", "text", "input_size", "precision", "world_size", "global_batch",
                        "adaptation_data", "skipped_eval_images")
# Fields every method must share on one dataset for the columns to be comparable (flagged with ‡).
DATASET_PROTOCOL_FIELDS = ("split", "num_eval_images", "subsample_classes", "skipped_eval_images")
NO_SKIPPED = {"count": 0, "paths": []}  # results.json files older than the field skipped nothing
STD_CAPTIONS = {
    "population": "population std over seeds (ddof=0, as CoOp's parse_test_res)",
    "sample": "sample std over seeds (ddof=1)",
    "ci95": "95% confidence interval over seeds (1.96 x population std / sqrt(n), as parse_test_res --ci95)",
}


# ---------------------------------------------------------------------------- finding and reading runs
def find_results(paths):
    """Every results.json under the given folders / files / globs (sorted, each file once)."""
    found = []
    for pattern in paths:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches or not all(osp.exists(m) for m in matches):
            raise UserError("run folder '{}' does not exist (give output folders of finished runs, e.g. "
                            "output/ or 'output/*/FAIR')".format(pattern))
        for match in matches:
            if osp.isfile(match):
                found.append(match)
                continue
            for dirpath, dirnames, filenames in os.walk(match):
                dirnames.sort()
                if "results.json" in filenames:
                    found.append(osp.join(dirpath, "results.json"))
    unique = OrderedDict((osp.realpath(p), p) for p in found)
    if not unique:
        raise UserError("no results.json found under {}; run a method first (e.g. bash scripts/zsclip/main.sh "
                        "dtd) or point at its output folder".format(", ".join(paths)))
    return list(unique.values())


def _require(record, keys, path):
    node = record
    for key in keys:
        if not isinstance(node, dict) or node.get(key) is None:
            raise UserError("{}: malformed results.json, '{}' is missing; re-run that seed (delete the file and "
                            "run its script again)".format(path, ".".join(keys)))
        node = node[key]
    return node


def load_run(path):
    """One results.json as a flat dict: path, trainer, cfg, dataset, seed, metrics, protocol, backbone, history."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError("{}: cannot read results.json ({}); delete it and re-run that seed".format(path, exc)) from exc
    if not isinstance(record, dict):
        raise UserError("{}: malformed results.json, expected a JSON object; delete it and re-run that "
                        "seed".format(path))
    seed = _require(record, ["seed"], path)
    if not isinstance(seed, int):
        raise UserError("{}: malformed results.json, 'seed' must be an integer, got {!r}".format(path, seed))
    return {
        "path": path,
        "trainer": str(_require(record, ["trainer"], path)),
        "cfg": str(record.get("cfg") or ""),
        "dataset": str(record.get("dataset_key") or _require(record, ["dataset"], path)),
        "seed": seed,
        "metrics": _require(record, ["metrics"], path),
        "protocol": dict(record.get("protocol") or {}, skipped_eval_images=(record.get("protocol") or {}).get(
            "skipped_eval_images") or NO_SKIPPED),
        "backbone": str(record.get("backbone") or "?"),
        "backbone_fingerprint": record.get("backbone_fingerprint"),
        "history": record.get("history") or [],
    }


def metric_value(run, metric):
    value = run["metrics"].get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError("{}: metrics.{} is {!r}, not a number; choose another --metric ({}) or re-run that "
                        "seed".format(run["path"], metric, value, ", ".join(METRICS)))
    return float(value)


def known_methods():
    """The methods of this checkout (``tools/methods.py``: the scripts under ``scripts/``), in table order."""
    return method_registry.discover()


def trainer_name(name, methods=None):
    """A script folder name (fair) or trainer name (FAIR), optionally with /cfg, as TRAINER[/cfg]."""
    trainer, _, cfg = name.partition("/")
    try:
        trainer = method_registry.find(trainer, known_methods() if methods is None else methods).trainer
    except method_registry.UnknownMethod:
        pass  # a trainer without a script (runs of a host's trainer, say): kept as given
    return trainer + ("/" + cfg if cfg else "")


def check_requested_methods(requested, runs, methods=None):
    """Each name asked for is a method of this checkout or the trainer of some run; a typo is an error
    (not a silent row of '-')."""
    methods = known_methods() if methods is None else methods
    trainers = {r["trainer"] for r in runs}
    for name in requested or []:
        trainer = name.partition("/")[0]
        try:
            method_registry.find(trainer, methods)
        except method_registry.UnknownMethod:
            if trainer not in trainers:
                raise UserError("--methods {}: no such method (methods: {}) and no run of a trainer of that name "
                                "under the given folders".format(name, " ".join(m.name for m in methods))) from None


def _matches(run, wanted):
    trainer, _, cfg = wanted.partition("/")
    return run["trainer"] == trainer and (not cfg or run["cfg"] == cfg)


def select_runs(runs, methods=None, datasets=None, seeds=None, cfg=None):
    """Keep the runs of the named methods (TRAINER or TRAINER/cfg), datasets, seeds and config name."""
    check_requested_methods(methods, runs)
    if cfg:
        runs = [r for r in runs if r["cfg"] == cfg]
    if methods:
        wanted = [trainer_name(m) for m in methods]
        runs = [r for r in runs if any(_matches(r, w) for w in wanted)]
    if datasets:
        runs = [r for r in runs if r["dataset"] in datasets]
    if seeds:
        runs = [r for r in runs if r["seed"] in seeds]
    return runs


def label_runs(runs):
    """Set run['method']: the trainer, or trainer/cfg when that trainer appears with several configs."""
    cfgs = {}
    for r in runs:
        cfgs.setdefault(r["trainer"], set()).add(r["cfg"])
    for r in runs:
        r["method"] = r["trainer"] + ("/" + r["cfg"] if len(cfgs[r["trainer"]]) > 1 else "")
    return runs


def method_order(labels, requested=None):
    """Row order: the requested names first (a name without results keeps an empty row), then the
    methods' order (``tools/methods.py``), then alphabetical."""
    canon = method_registry.trainer_order(known_methods())
    ranked = sorted(labels, key=lambda lab: (canon.index(lab.split("/")[0]) if lab.split("/")[0] in canon
                                             else len(canon), lab))
    order = []
    for name in map(trainer_name, requested or []):
        mine = [lab for lab in ranked if lab == name or lab.split("/")[0] == name.split("/")[0]]
        order += [lab for lab in (mine or [name]) if lab not in order]
    return order + [lab for lab in ranked if lab not in order]


# ---------------------------------------------------------------------------- statistics and table
def spread(values, std):
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    pop = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    if std == "sample":
        return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    if std == "ci95":
        return mean, 1.96 * pop / math.sqrt(n)
    return mean, pop


def _fmt_value(v):
    if isinstance(v, dict):
        return "; ".join("{}={}".format(k, _fmt_value(x)) for k, x in sorted(v.items()))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt_value(x) for x in v) + "]"
    return str(v)


def _disagreements(runs, fields):
    """{field: {value string: [seeds]}} for each field on which the runs disagree."""
    out = OrderedDict()
    for field in fields:
        values = OrderedDict()
        for r in runs:
            source = r if field.startswith("backbone") else r["protocol"]
            values.setdefault(_fmt_value(source.get(field)), []).append(r["seed"])
        if len(values) > 1:
            out[field] = values
    return out


def row_titles(rows):
    """{row label: the method's title (``# title:`` of its main.sh)}, keeping a ``/cfg`` suffix."""
    titles = {m.trainer: m.title for m in known_methods()}
    out = {}
    for row in rows:
        trainer, sep, cfg = row.partition("/")
        out[row] = titles.get(trainer, trainer) + sep + cfg
    return out


def build_table(runs, metric="accuracy", std="population", methods=None, datasets=None, seeds=None, cfg=None,
                titles=False):
    """The table as plain data (see ``to_markdown``/``to_csv``). ``titles``: the markdown rows show the
    methods' titles (zero-shot CLIP, MUST-style, ...) instead of the trainer names."""
    if metric not in METRICS:
        raise UserError("--metric {}: unknown metric; choose one of {}".format(metric, ", ".join(METRICS)))
    if std not in STD_CAPTIONS:
        raise UserError("--std {}: choose one of {}".format(std, ", ".join(STD_CAPTIONS)))
    runs = label_runs(select_runs(runs, methods, datasets, seeds, cfg))
    if not runs:
        raise UserError("no results left after filtering by --methods/--datasets/--seeds/--cfg ({} / {} / {} / {}); "
                        "check the names (trainer names such as FAIR, dataset keys such as dtd)".format(
                            methods or "all", datasets or "all", seeds or "all", cfg or "all"))
    rows = method_order({r["method"] for r in runs}, methods)
    cols = list(datasets) if datasets else sorted({r["dataset"] for r in runs})
    expected = sorted(seeds) if seeds else sorted({r["seed"] for r in runs})

    cells, notes = {}, []
    for m in rows:
        for d in cols:
            group = sorted([r for r in runs if r["method"] == m and r["dataset"] == d], key=lambda r: r["seed"])
            if not group:
                continue
            for a, b in zip(group, group[1:]):
                if a["seed"] == b["seed"]:
                    raise UserError("two results for {} on {} seed {}: {} and {}; pass only one of these run "
                                    "folders".format(m, d, a["seed"], a["path"], b["path"]))
            values = [metric_value(r, metric) for r in group]
            mean, dev = spread(values, std)
            mismatch = _disagreements(group, CELL_PROTOCOL_FIELDS + ("backbone", "backbone_fingerprint"))
            for field, by_value in mismatch.items():
                notes.append("† {} on {}: seeds disagree on {}: {}".format(m, d, field, "; ".join(
                    "{} (seed {})".format(v, ", ".join(map(str, s))) for v, s in by_value.items())))
            cells[m, d] = {"mean": mean, "std": dev, "n": len(values), "seeds": [r["seed"] for r in group],
                           "values": values, "mismatch": bool(mismatch), "runs": group}
    col_flags = set()
    for d in cols:
        col_runs = [r for r in runs if r["dataset"] == d]
        for field, by_value in _disagreements(col_runs, DATASET_PROTOCOL_FIELDS).items():
            col_flags.add(d)
            owners = {v: sorted({r["method"] for r in col_runs if _fmt_value(r["protocol"].get(field)) == v})
                      for v in by_value}
            notes.append("‡ {}: methods disagree on {}: {}".format(d, field, "; ".join(
                "{} ({})".format(v, ", ".join(ms)) for v, ms in owners.items())))

    # The average is over the datasets every method with results has (a method with none keeps "-").
    filled = [m for m in rows if any((m, d) in cells for d in cols)]
    common = [d for d in cols if all((m, d) in cells for m in filled)]
    averages = {m: sum(cells[m, d]["mean"] for d in common) / len(common) for m in filled} if common else {}
    return {"metric": metric, "std": std, "rows": rows, "cols": cols, "cells": cells, "seeds": expected,
            "labels": row_titles(rows) if titles else {},
            "average_over": common, "averages": averages, "protocol": protocol_rows(runs, rows), "notes": notes,
            "col_flags": col_flags}


def _per_method_value(runs, getter):
    """One value if every run agrees, else 'v1 [datasets]; v2 [datasets]'."""
    by_value = OrderedDict()
    for r in runs:
        by_value.setdefault(_fmt_value(getter(r)), set()).add(r["dataset"])
    if len(by_value) == 1:
        return next(iter(by_value))
    return "; ".join("{} [{}]".format(v, ", ".join(sorted(ds))) for v, ds in by_value.items())


def _text_sources(runs):
    """The text protocol of a method: key=value where all its runs agree, key=(per dataset) otherwise;
    our shipped description files read as 'ours'; a template set is named (datasets/templates.py)."""
    from fairclip.datasets.templates import describe_template_set

    values = OrderedDict()
    for r in runs:
        text = r["protocol"].get("text")
        if not isinstance(text, dict):
            return _per_method_value(runs, lambda run: run["protocol"].get("text"))
        for key, value in sorted(text.items()):
            if key == "descriptions" and _is_shipped_description(value, r["dataset"]):
                value = "ours"
            if key == "templates":  # name the template set: "coop (CoOp's per-dataset prompt)"
                value = describe_template_set(value)
            values.setdefault(key, set()).add(_fmt_value(value))
    return "; ".join("{}={}".format(k, next(iter(v)) if len(v) == 1 else "(per dataset)") for k, v in values.items())


def _is_shipped_description(path, dataset):
    tail = osp.join("datasets", "descriptions", dataset + ".json")
    return isinstance(path, str) and osp.normpath(path).endswith(tail)


PROTOCOL_COLUMNS = OrderedDict([
    ("split", lambda r: r["protocol"].get("split")),
    ("epochs", lambda r: r["protocol"].get("epochs")),
    ("selection", lambda r: r["protocol"].get("selection")),
    ("backbone", lambda r: r["backbone"]),
    ("text", None),  # summarised by _text_sources
    ("world size x global batch", lambda r: "{} x {}".format(r["protocol"].get("world_size"),
                                                             r["protocol"].get("global_batch"))
     if r["protocol"].get("epochs") else "- (no training)"),
    ("precision", lambda r: r["protocol"].get("precision")),
    ("skipped eval images", lambda r: _skipped_text(r["protocol"].get("skipped_eval_images"))),
    ("backend", lambda r: r["protocol"].get("toolbox_backend")),
])


def _skipped_text(skipped):
    """Unreadable val/test images a run left out (DATASET.SKIP_UNREADABLE_EVAL): "none" or "N (paths)"."""
    skipped = skipped or NO_SKIPPED
    if not skipped.get("count"):
        return "none"
    return "{} ({})".format(skipped["count"], ", ".join(map(str, skipped.get("paths") or [])))


def protocol_rows(runs, rows):
    out = OrderedDict()
    for m in rows:
        mine = [r for r in runs if r["method"] == m]
        out[m] = OrderedDict((name, "-" if not mine else _text_sources(mine) if get is None
                              else _per_method_value(mine, get)) for name, get in PROTOCOL_COLUMNS.items())
    return out


# ---------------------------------------------------------------------------- rendering
def format_cell(cell, expected_n):
    if cell is None:
        return "-"
    text = "{:.2f}".format(cell["mean"]) + (" ± {:.2f}".format(cell["std"]) if cell["std"] is not None else "")
    if cell["n"] != expected_n:
        text += " (n={})".format(cell["n"])
    return text + (" †" if cell["mismatch"] else "")


def caption(table):
    n = len(table["seeds"])
    seeds = ", ".join(map(str, table["seeds"]))
    avg = ("mean of the per-dataset means over the datasets every method has ({})".format(
        ", ".join(table["average_over"])) if table["average_over"] else "not available (no dataset has every method)")
    lines = [
        "{} (%) per method and dataset: mean ± {}; {} seed{} ({}); `(n=k)` marks a cell with only k of them, "
        "`-` a missing cell.".format(table["metric"], STD_CAPTIONS[table["std"]], n, "s" if n != 1 else "", seeds),
        "Average: {}.".format(avg),
    ]
    shared = [(name, vals.pop()) for name in ("split", "backbone", "selection")
              for vals in [{table["protocol"][m][name] for m in table["rows"] if table["protocol"][m][name] != "-"}]
              if len(vals) == 1]
    if shared:
        lines.append("Protocol: " + "; ".join("{} {}".format(k, v) for k, v in shared) + " (per method below).")
    return lines


def to_markdown(table):
    from tabulate import tabulate

    expected_n = len(table["seeds"])
    header = ["Method"] + [d + (" ‡" if d in table["col_flags"] else "") for d in table["cols"]] + ["Average"]
    body = []
    for m in table["rows"]:
        avg = table["averages"].get(m)
        body.append([table["labels"].get(m, m)] + [format_cell(table["cells"].get((m, d)), expected_n) for d in table["cols"]]
                    + ["{:.2f}".format(avg) if avg is not None else "-"])
    parts = ["## Comparison: {}".format(table["metric"]), ""]
    for line in caption(table):
        parts += [line, ""]  # one paragraph each
    parts.append(tabulate(body, headers=header, tablefmt="pipe", colalign=["left"] + ["right"] * (len(header) - 1)))
    parts += ["", "### Protocol per method", ""]
    proto_header = ["Method"] + list(PROTOCOL_COLUMNS)
    parts.append(tabulate([[table["labels"].get(m, m)] + list(p.values()) for m, p in table["protocol"].items()],
                          headers=proto_header, tablefmt="pipe"))
    if table["notes"]:
        parts += ["", "### Protocol warnings", ""] + ["- " + n for n in table["notes"]]
    return "\n".join(parts) + "\n"


def to_csv(table):
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["method"]
    for d in table["cols"]:
        header += [d + "_mean", d + "_std", d + "_n"]
    header += ["average_mean", "average_datasets", "std_kind", "metric"] + [
        k.replace(" ", "_") for k in PROTOCOL_COLUMNS] + ["protocol_mismatch"]
    writer.writerow(header)
    r4 = lambda v: "" if v is None else "{:.4f}".format(v)  # noqa: E731
    for m in table["rows"]:
        row = [m]
        for d in table["cols"]:
            cell = table["cells"].get((m, d))
            row += [r4(cell["mean"]), r4(cell["std"]), cell["n"]] if cell else ["", "", 0]
        row += [r4(table["averages"].get(m)), " ".join(table["average_over"]), table["std"], table["metric"]]
        row += list(table["protocol"][m].values())
        row.append(any(table["cells"][m, d]["mismatch"] for d in table["cols"] if (m, d) in table["cells"]))
        writer.writerow(row)
    return buf.getvalue()


# ---------------------------------------------------------------------------- command line
def claim_run_dirs(args, parser, options=("methods", "datasets")):
    """``--methods A B out/`` puts the run folder into --methods (nargs='+'): move folders (existing paths
    or globs) from those lists back to the positional RUN_DIR_OR_GLOB list."""
    for name in options:
        values = getattr(args, name, None) or []
        moved = [v for v in values if osp.exists(v) or glob.has_magic(v)]
        if moved:
            setattr(args, name, [v for v in values if v not in moved] or None)
            args.paths = list(args.paths) + moved
    if not args.paths:
        parser.error("give at least one RUN_DIR_OR_GLOB (an output folder, results.json file or glob)")
    return args


def build_parser():
    p = argparse.ArgumentParser(prog="python -m tools.results_table", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="*", metavar="RUN_DIR_OR_GLOB", help="output folders, results.json files or globs")
    p.add_argument("--metric", default="accuracy", help="one of " + ", ".join(METRICS))
    p.add_argument("--format", default="markdown", choices=["markdown", "csv", "both"])
    p.add_argument("--out", default="", help="write PREFIX.md and/or PREFIX.csv")
    p.add_argument("--methods", nargs="+",
                   help="trainer names (FAIR), script names (fair) or TRAINER/cfg; sets the row order")
    p.add_argument("--datasets", nargs="+", help="dataset keys (dtd eurosat ...); sets column order")
    p.add_argument("--seeds", nargs="+", type=int, help="keep only these seeds (and mark cells missing any)")
    p.add_argument("--cfg", help="keep only runs of this method config (e.g. vit_b32)")
    p.add_argument("--std", default="population", choices=list(STD_CAPTIONS))
    p.add_argument("--titles", action="store_true",
                   help="markdown rows show the methods' titles (zero-shot CLIP, MUST-style) instead of trainer names")
    return p


def main(argv=None):
    parser = build_parser()
    args = claim_run_dirs(parser.parse_args(argv), parser)
    try:
        runs = [load_run(p) for p in find_results(args.paths)]
        table = build_table(runs, args.metric, args.std, args.methods, args.datasets, args.seeds, args.cfg,
                            titles=args.titles)
        for m in table["rows"]:
            if not any(k[0] == m for k in table["cells"]):
                print("warning: no results for method {}".format(m), file=sys.stderr)
        outputs = []
        if args.format in ("markdown", "both"):
            outputs.append((".md", to_markdown(table)))
        if args.format in ("csv", "both"):
            outputs.append((".csv", to_csv(table)))
        for ext, text in outputs:
            if args.out:
                atomic_write_text(text, args.out + ext)
            print(text)
        if args.out:
            print("written: " + ", ".join(args.out + ext for ext, _ in outputs))
    except UserError as exc:
        return report_error(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
