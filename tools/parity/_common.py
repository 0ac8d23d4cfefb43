"""Shared parts of the parity scripts: the command line, importing a reference checkout, the report.

A parity script builds both sides on identical inputs, adds one row per compared quantity to a
``ParityReport`` and ends with ``sys.exit(report.finish())``: it prints the table (and writes it as JSON
with ``--json``) and returns 1 when a row is beyond its tolerance, else 0.
"""
import argparse
import contextlib
import os.path as osp
import sys

import torch

from fairclip.toolbox.errors import UserError


def build_parser(method, description):
    """The common command line; scripts add their own options to the returned parser."""
    parser = argparse.ArgumentParser(prog="python -m tools.parity.{}".format(method), description=description)
    parser.add_argument("--reference", required=True,
                        help="path to a checkout of the authors' repository (never committed or installed)")
    parser.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance for tensors (default 1e-5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shared inputs (default 0)")
    parser.add_argument("--json", default="", help="also write the report as JSON to this file")
    return parser


def check_reference(path, marker):
    """``path`` exists and holds ``marker`` (a file every checkout of the reference has); else a one-line
    error naming both."""
    if not osp.isdir(path):
        raise UserError("--reference {}: no such folder; pass a checkout of the reference repository".format(path))
    if not osp.exists(osp.join(path, marker)):
        raise UserError("--reference {}: {} not found; is this a checkout of the right repository?".format(
            path, marker))
    return osp.abspath(path)


@contextlib.contextmanager
def restore_modules(names):
    """Put back, on exit, the ``sys.modules`` entries of the top-level ``names`` as they were on entry.

    ``reference_on_path`` drops e.g. ``clip`` (most references ship their own) before and after importing
    a reference; without this, the next ``import clip`` in this process would load OpenAI's package a
    second time, with new classes that the objects built before no longer match."""
    saved = {n: m for n, m in sys.modules.items() if n.split(".")[0] in names}
    try:
        yield
    finally:
        for n in [n for n in sys.modules if n.split(".")[0] in names]:
            del sys.modules[n]
        sys.modules.update(saved)


@contextlib.contextmanager
def reference_on_path(path, module_names=()):
    """Import the reference from ``path``: it goes first on ``sys.path`` for the block, and modules whose
    top-level name is in ``module_names`` (e.g. the reference's own ``datasets``/``trainers``/``clip``) are
    dropped from ``sys.modules`` before and after, so neither side sees the other's copy."""

    def drop():
        for name in list(sys.modules):
            if name.split(".")[0] in module_names:
                del sys.modules[name]

    drop()
    sys.path.insert(0, path)
    try:
        yield
    finally:
        sys.path.remove(path)
        drop()


def git_commit(path):
    """The commit of a checkout (``git rev-parse HEAD``), or "unknown"."""
    import subprocess

    try:
        out = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class ParityReport:
    """Rows of (quantity, measure, value, tolerance, ok)."""

    def __init__(self, method, reference):
        self.method, self.reference = method, reference
        self.rows = []

    def shapes_differ(self, name, ours, ref):
        """Whether the two tensors' shapes differ; if so, a failing "shape" row is added for ``name``."""
        if ours.shape == ref.shape:
            return False
        self.rows.append((name, "shape", "{} vs {}".format(tuple(ours.shape), tuple(ref.shape)), "equal", False))
        return True

    def tensors(self, name, ours, ref, atol):
        """Max absolute difference of two tensors of the same shape (a shape mismatch fails the row)."""
        ours, ref = torch.as_tensor(ours).detach().double().cpu(), torch.as_tensor(ref).detach().double().cpu()
        if self.shapes_differ(name, ours, ref):
            return
        diff = (ours - ref).abs().max().item() if ours.numel() else 0.0
        self.rows.append((name, "max |diff|", diff, atol, diff <= atol))

    def agreement(self, name, ours, ref, minimum=1.0):
        """Fraction of equal entries of two integer tensors (predictions, pseudo-labels, masks)."""
        ours, ref = torch.as_tensor(ours).cpu(), torch.as_tensor(ref).cpu()
        if self.shapes_differ(name, ours, ref):
            return
        frac = (ours == ref).double().mean().item() if ours.numel() else 1.0
        self.rows.append((name, "agreement", frac, minimum, frac >= minimum))

    def scalar(self, name, ours, ref, atol):
        diff = abs(float(ours) - float(ref))
        self.rows.append((name, "|diff|", diff, atol, diff <= atol))

    @property
    def ok(self):
        return all(row[-1] for row in self.rows)

    def finish(self, json_path=""):
        """Print the report (and write it as JSON); return the exit status (0 when every row holds)."""
        print("parity: {} vs {}".format(self.method, self.reference))
        for name, measure, value, tol, ok in self.rows:
            value_s = "{:.3g}".format(value) if isinstance(value, float) else str(value)
            print("  {:<40} {:<11} {:>12}  tol {:<8} {}".format(name, measure, value_s, str(tol), "ok" if ok else "FAIL"))
        print("parity {}: {}".format(self.method, "PASS" if self.ok else "FAIL"))
        if json_path:
            from fairclip.toolbox.io import atomic_write_json

            atomic_write_json({"method": self.method, "reference": self.reference, "pass": self.ok,
                               "rows": [dict(zip(("quantity", "measure", "value", "tolerance", "ok"), r))
                                        for r in self.rows]}, json_path)
        return 0 if self.ok else 1


def run(main):
    """Call ``main()`` and turn a ``UserError`` into the one-line error and exit status 2."""
    from fairclip.toolbox.errors import report_error

    try:
        sys.exit(main())
    except UserError as exc:
        sys.exit(report_error(exc))


__all__ = ["build_parser", "check_reference", "reference_on_path", "git_commit", "ParityReport", "run"]
