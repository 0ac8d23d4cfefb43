"""The methods of this toolbox, found in ``scripts/<method>/main.sh``: the one place that lists them.

A method is a folder ``scripts/<name>/`` whose ``main.sh`` hands its arguments to ``scripts/run_seeds.sh``
with a registered trainer and a mode::

    exec "$(dirname "${BASH_SOURCE[0]}")/../run_seeds.sh" FAIR train "$@"

``train``: the method adapts CLIP on the unlabelled train split (its runs log a per-epoch history, drawn
by the curves plot); ``eval``: training-free (``--eval-only``). Two optional header lines of ``main.sh``:

    # title: MUST-style self-training     the method's display name (default: the trainer name)
    # order: 50                           its place in tables, plots and listings (default: after every
                                          method that has one, then by folder name)

``scripts/compare.sh``, ``scripts/demo.sh``, ``tools.results_table``, ``tools.plots`` and ``tools.run_jobs``
all read this module, so a new method (``python -m tools.new_trainer``) needs no list edited anywhere.
It reads text files only (no torch import), so shell scripts call it cheaply::

    python -m tools.methods                     # the table of methods
    python -m tools.methods --shell [NAME ...]  # "name trainer mode title" lines, for scripts (exit 2: unknown)
"""
import argparse
import os
import os.path as osp
import re
import sys
from collections import namedtuple

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

Method = namedtuple("Method", "name trainer mode title order script")
Method.trains = property(lambda self: self.mode == "train")

_RUN_LINE = re.compile(r'run_seeds\.sh"?\s+([A-Za-z_][A-Za-z0-9_]*)\s+(train|eval)\b')
_HEADER = re.compile(r"^#\s*(title|order):\s*(.*?)\s*$", re.MULTILINE)
UNORDERED = 10 ** 6


class UnknownMethod(ValueError):
    """A name that is neither a method folder nor the trainer of one."""


def read_method(script, name):
    """The ``Method`` of one ``main.sh``, or None when it does not run ``run_seeds.sh`` (not a method)."""
    with open(script) as f:
        text = f.read()
    match = _RUN_LINE.search(text)
    if not match:
        return None
    header = dict(_HEADER.findall(text))
    order = header.get("order", "")
    return Method(name=name, trainer=match.group(1), mode=match.group(2),
                  title=header.get("title") or match.group(1),
                  order=int(order) if re.fullmatch(r"-?\d+", order) else UNORDERED, script=script)


def discover(repo=None):
    """Every method of the checkout at ``repo`` (default: this one), in table order."""
    root = osp.join(repo or REPO, "scripts")
    methods = []
    for name in sorted(os.listdir(root)) if osp.isdir(root) else []:
        script = osp.join(root, name, "main.sh")
        if osp.isfile(script):
            method = read_method(script, name)
            if method is not None:
                methods.append(method)
    return sorted(methods, key=lambda m: (m.order, m.name))


def find(name, methods):
    """The method named ``name``: its folder or its trainer, in any case; ``UnknownMethod`` otherwise."""
    for m in methods:
        if name.lower() in (m.name.lower(), m.trainer.lower()):
            return m
    raise UnknownMethod("unknown method '{}'; choose from {} (each is a folder scripts/<method>/ with a "
                        "main.sh)".format(name, " ".join(m.name for m in methods) or "(none found)"))


def trainer_order(methods=None):
    """Trainer names in table order."""
    return [m.trainer for m in (discover() if methods is None else methods)]


def _table(methods):
    rows = [("method", "trainer", "trains", "title")] + [
        (m.name, m.trainer, "yes" if m.trains else "no", m.title) for m in methods]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.methods", description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help="method folders or trainer names (default: every method)")
    p.add_argument("--shell", action="store_true", help="print 'name trainer mode title' per method, for scripts")
    p.add_argument("--repo", default=None, help="the checkout to read (default: this one)")
    args = p.parse_args(argv)
    methods = discover(args.repo)
    try:
        chosen = [find(n, methods) for n in args.names] if args.names else methods
    except UnknownMethod as exc:
        print("ERROR: {}".format(exc), file=sys.stderr)
        return 2
    if args.shell:
        for m in chosen:
            print(m.name, m.trainer, m.mode, m.title)
    else:
        print(_table(chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
