"""The MUST and DPA parity scripts (tools/parity/must.py, dpa.py) run against stub references
(tests/parity_stubs: the references' interface, written from the papers' rules), so the scripts' own logic
is tested without the authors' checkouts: both sides built on a miniature dataset with a tiny CLIP, the
steps observed, the rows compared, and a deliberate deviation in the stub caught."""
import json
import os

import pytest

from fairclip.tools.parity import dpa, must
from fairclip.tools.parity._common import run

STUBS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "parity_stubs")


@pytest.fixture(scope="module")
def clip32(tmp_path_factory):
    """A tiny random CLIP with a 32 px input (patch 8): the steps cost little at that size."""
    from fairclip.tools.make_tiny_clip import save_tiny_clip

    return save_tiny_clip(str(tmp_path_factory.mktemp("clip32") / "tiny_clip_32.pt"), resolution=32, patch=8)


def _argv(stub, root, clip, tmp_path, *extra):
    return ["--reference", os.path.join(STUBS, stub), "--root", root, "--clip", clip, "--dataset", "oxford_pets",
            "--batch-size", "4", "--steps", "2", "--json", str(tmp_path / "report.json"), *extra,
            "INPUT.SIZE", "(32, 32)"]


def _failing_rows(tmp_path):
    with open(tmp_path / "report.json") as f:
        report = json.load(f)
    return report, [row["quantity"] for row in report["rows"] if not row["ok"]]


@pytest.mark.parametrize("script, stub, extra, broken_row", [
    (must, "must", ["--threshold", "0.0", "--balance", "running", "--tune", "visual"], "EMA decay"),
    (dpa, "dpa", [], "loss"),
])
def test_parity_script_against_stub(script, stub, extra, broken_row, mini_pets, clip32, tmp_path, monkeypatch,
                                    capsys):
    monkeypatch.delenv("PARITY_STUB_BREAK", raising=False)
    assert script.main(_argv(stub, mini_pets, clip32, tmp_path, *extra)) == 0, capsys.readouterr().out
    report, failing = _failing_rows(tmp_path)
    assert report["pass"] and not failing
    names = [row["quantity"] for row in report["rows"]]
    assert any("step 1:" in n and "grad LayerNorms" in n for n in names)
    if script is must:  # --tune visual: the whole image tower is compared (TRAINER.MUST.TUNE visual)
        assert any("grad other visual weights" in n for n in names)
    assert "PASS" in capsys.readouterr().out

    monkeypatch.setenv("PARITY_STUB_BREAK", "1")  # the stub deviates in one place: the script must say so
    assert script.main(_argv(stub, mini_pets, clip32, tmp_path, *extra)) == 1
    report, failing = _failing_rows(tmp_path)
    assert not report["pass"] and any(broken_row in n for n in failing), failing


@pytest.mark.parametrize("script", [must, dpa])
def test_parity_script_help_and_bad_reference(script, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        script.parse_args(["--help"])
    assert exc.value.code == 0 and "--reference" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        run(lambda: script.main(["--reference", str(tmp_path)]))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ERROR:") and "\n" not in err and str(tmp_path) in err


# ---------------------------------------------------------------------------- rules the parity runs fixed
def test_iteration_cosine_scales_each_groups_floor_with_it():
    import torch

    from fairclip.trainers._schedules import iteration_cosine

    p, q = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "lr": 1e-3}, {"params": [q], "lr": 1e-3 * 0.01}], lr=1e-3)
    sched = iteration_cosine(opt, 1e-3, 1e-6, total_steps=4)
    lrs = []
    for _ in range(5):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    # MUST's cosine_scheduler times the group's scale: the scaled group ends at 0.01 * 1e-6, never above its start
    assert lrs[0] == pytest.approx([1e-3, 1e-5]) and lrs[4] == pytest.approx([1e-6, 1e-8])
    assert lrs[2][1] == pytest.approx(0.01 * (1e-6 + 0.5 * (1e-3 - 1e-6)))


def test_must_and_dpa_balance_term_is_unsmoothed_and_running_form_scaled_from_the_first_step():
    import torch

    from fairclip.trainers._losses import RunningMarginal, log_marginal_loss
    from fairclip.trainers.must import balance_term

    p = torch.tensor([1e-12, 0.5, 0.5 - 1e-12], dtype=torch.float64)
    assert log_marginal_loss(p).item() == pytest.approx(-torch.log(p).mean().item(), rel=1e-12)
    assert torch.isfinite(log_marginal_loss(torch.tensor([0.0, 1.0])))  # underflow: large, finite
    probs = torch.softmax(torch.randn(4, 3, dtype=torch.float64), dim=1)
    marginal = RunningMarginal(0.5)
    first = balance_term(probs, "running", marginal)
    assert first.item() == pytest.approx(2 * log_marginal_loss(probs.mean(0)).item())
