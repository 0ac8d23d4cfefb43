"""The results table and the plots on hand-written results.json files (the schema of trainers/_results.py)."""
import csv
import io
import json
import math
import os
import sys

import pytest

from tests.conftest import run_cli
from fairclip.toolbox.errors import UserError
from fairclip.tools import plots
from fairclip.tools.results_table import build_table, find_results, load_run, main, to_csv, to_markdown

CLASSES = {"dtd": ["banded", "blotchy", "braided"], "eurosat": ["Annual Crop Land", "Forest", "Highway or Road"],
           "oxford_pets": ["abyssinian", "beagle", "bengal"]}


def write_result(root, trainer, dataset, seed, acc, cfg="vit_b32", epochs=1, history=True, **protocol):
    """A results.json in the run-folder layout of scripts/run_seeds.sh; returns its path."""
    trained = trainer not in ("ZeroshotCLIP", "CuPL", "WCA")
    epochs = epochs if trained else 0
    per_class = {c: min(100.0, acc + 10.0 * (i - 1)) for i, c in enumerate(CLASSES[dataset])}
    record = {
        "schema": 1, "dataset": dataset.upper(), "dataset_key": dataset, "trainer": trainer, "cfg": cfg,
        "seed": seed, "backbone": "ViT-B/32", "backbone_fingerprint": "abc",
        "metrics": {"accuracy": acc, "error_rate": 100.0 - acc, "macro_f1": acc - 1.0,
                    "mean_per_class_accuracy": sum(per_class.values()) / 3, "per_class_accuracy": per_class},
        "protocol": dict({"split": "test", "num_eval_images": 30, "num_train_images": 90, "num_shots": -1,
                          "subsample_classes": "all", "epochs": epochs, "evaluated_epoch": epochs,
                          "selection": "last epoch" if trained else "none (no training)",
                          "text": {"templates": "ensemble"}, "input_size": [224, 224], "precision": "fp32",
                          "world_size": 1, "batch_per_process": 64, "global_batch": 64,
                          "toolbox_backend": "builtin"}, **protocol),
        "history": [{"epoch": e, "diag_pseudo_label_acc": 40.0 + 3 * e + seed, "test_acc": acc - epochs + e}
                    for e in range(1, epochs + 1)] if trained and history else [],
    }
    path = os.path.join(str(root), dataset, trainer, cfg, "seed{}".format(seed), "results.json")
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump(record, f)
    return path


@pytest.fixture
def runs_dir(tmp_path):
    """FAIR and ZeroshotCLIP on dtd and eurosat (3 seeds, but ZeroshotCLIP/eurosat lacks seed 3), FAIR on pets."""
    for seed, acc in zip((1, 2, 3), (60.0, 62.0, 67.0)):
        write_result(tmp_path, "FAIR", "dtd", seed, acc, epochs=3)
        write_result(tmp_path, "FAIR", "eurosat", seed, acc + 10, epochs=3)
        write_result(tmp_path, "FAIR", "oxford_pets", seed, 80.0, epochs=3)
        write_result(tmp_path, "ZeroshotCLIP", "dtd", seed, 40.0)
        if seed != 3:
            write_result(tmp_path, "ZeroshotCLIP", "eurosat", seed, 50.0 + seed)
    return tmp_path


def _table(root, **kwargs):
    return build_table([load_run(p) for p in find_results([str(root)])], **kwargs)


def _csv_rows(table):
    return {row["method"]: row for row in csv.DictReader(io.StringIO(to_csv(table)))}


# ---------------------------------------------------------------------------- values
def test_mean_and_population_std_over_seeds(runs_dir):
    table = _table(runs_dir)
    cell = table["cells"]["FAIR", "dtd"]
    assert cell["n"] == 3 and cell["seeds"] == [1, 2, 3]
    assert cell["mean"] == pytest.approx(63.0)
    assert cell["std"] == pytest.approx(math.sqrt(26.0 / 3))  # ddof=0, as CoOp's parse_test_res
    assert "| FAIR" in to_markdown(table) and "63.00 ± 2.94" in to_markdown(table)
    assert "population std" in to_markdown(table)


@pytest.mark.parametrize("kind,expected", [("sample", math.sqrt(13.0)),
                                           ("ci95", 1.96 * math.sqrt(26.0 / 3) / math.sqrt(3))])
def test_other_spreads_are_named_in_the_caption(runs_dir, kind, expected):
    table = _table(runs_dir, std=kind)
    assert table["cells"]["FAIR", "dtd"]["std"] == pytest.approx(expected)
    assert {"sample": "ddof=1", "ci95": "95% confidence"}[kind] in to_markdown(table)


def test_missing_seed_is_marked_and_average_uses_datasets_every_method_has(runs_dir):
    table = _table(runs_dir)
    md = to_markdown(table)
    assert table["cells"]["ZeroshotCLIP", "eurosat"]["n"] == 2
    # oxford_pets has only FAIR: shown as a column ("-" for ZeroshotCLIP), left out of the average
    assert table["average_over"] == ["dtd", "eurosat"]
    assert table["averages"]["FAIR"] == pytest.approx((63.0 + 73.0) / 2)
    assert table["averages"]["ZeroshotCLIP"] == pytest.approx((40.0 + 51.5) / 2)
    zs_line = next(line for line in md.splitlines() if line.startswith("| ZeroshotCLIP"))
    assert [c.strip() for c in zs_line.strip("| ").split("|")] == [
        "ZeroshotCLIP", "40.00 ± 0.00", "51.50 ± 0.50 (n=2)", "-", "45.75"]
    fair_line = next(line for line in md.splitlines() if line.startswith("| FAIR"))
    assert "(n=" not in fair_line
    assert "datasets every method has (dtd, eurosat)" in md


def test_rows_follow_the_canonical_method_order_and_columns_are_sorted(runs_dir):
    write_result(runs_dir, "CuPL", "dtd", 1, 45.0)
    table = _table(runs_dir)
    assert table["rows"] == ["ZeroshotCLIP", "CuPL", "FAIR"]
    assert table["cols"] == ["dtd", "eurosat", "oxford_pets"]
    assert table["seeds"] == [1, 2, 3]
    assert "45.00 (n=1)" in to_markdown(table)  # one seed: no spread shown


def test_requested_methods_datasets_and_seeds(runs_dir):
    table = _table(runs_dir, methods=["fair", "zsclip", "MUST"], datasets=["eurosat", "dtd"], seeds=[1, 2])
    assert table["rows"] == ["FAIR", "ZeroshotCLIP", "MUST"]  # script names work; order as asked
    assert table["cols"] == ["eurosat", "dtd"]
    assert table["cells"]["FAIR", "dtd"]["mean"] == pytest.approx(61.0)
    md = to_markdown(table)
    must_line = next(line for line in md.splitlines() if line.startswith("| MUST"))
    assert must_line.replace(" ", "") == "|MUST|-|-|-|"  # asked for, no results: an empty row
    assert table["averages"]["FAIR"] == pytest.approx((71.0 + 61.0) / 2)  # the empty row does not block it


def test_a_method_name_that_is_nothing_is_an_error_and_titles_are_shown_on_request(runs_dir):
    """A typo in --methods used to give a silent row of '-'; a trainer without a script (a host's, say) that
    has runs is still fine. --titles shows the methods' titles from their main.sh."""
    write_result(runs_dir, "HostOnly", "dtd", 1, 30.0)
    with pytest.raises(UserError, match="--methods entmin: no such method .*zsclip cupl .* and no run"):
        _table(runs_dir, methods=["zsclip", "entmin"])
    assert _table(runs_dir, methods=["HostOnly", "fair"])["rows"] == ["HostOnly", "FAIR"]
    md = to_markdown(_table(runs_dir, methods=["zsclip", "must", "fair"], titles=True))
    rows = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ")]
    assert rows[1:4] == ["zero-shot CLIP", "MUST-style", "FAIR"] and rows[5:8] == rows[1:4]  # table, protocol
    assert _csv_rows(_table(runs_dir, titles=True)).keys() >= {"ZeroshotCLIP", "FAIR"}  # the CSV keeps trainers


def test_several_configs_of_one_trainer_become_separate_rows(runs_dir):
    write_result(runs_dir, "FAIR", "dtd", 1, 70.0, cfg="vit_b16")
    table = _table(runs_dir)
    assert table["rows"] == ["ZeroshotCLIP", "FAIR/vit_b16", "FAIR/vit_b32"]
    assert table["cells"]["FAIR/vit_b16", "dtd"]["mean"] == 70.0
    assert _table(runs_dir, cfg="vit_b32")["rows"] == ["ZeroshotCLIP", "FAIR"]


# ---------------------------------------------------------------------------- protocol
def test_protocol_block_lists_each_method(runs_dir):
    md = to_markdown(_table(runs_dir))
    proto = md.split("### Protocol per method")[1]
    fair = next(line for line in proto.splitlines() if line.startswith("| FAIR"))
    zs = next(line for line in proto.splitlines() if line.startswith("| ZeroshotCLIP"))
    for text in ("test", "3", "last epoch", "ViT-B/32", "templates=ensemble", "1 x 64", "fp32"):
        assert text in fair
    assert "none (no training)" in zs and "- (no training)" in zs
    assert "Protocol: split test; backbone ViT-B/32" in md
    assert "Protocol warnings" not in md


def test_seeds_that_disagree_on_protocol_are_flagged(runs_dir):
    write_result(runs_dir, "MUST", "dtd", 1, 50.0, epochs=15)
    write_result(runs_dir, "MUST", "dtd", 2, 52.0, epochs=15)
    write_result(runs_dir, "MUST", "dtd", 3, 40.0, epochs=2)
    table = _table(runs_dir)
    assert table["cells"]["MUST", "dtd"]["mismatch"] and not table["cells"]["FAIR", "dtd"]["mismatch"]
    md = to_markdown(table)
    assert "47.33 ± 5.25 †" in md
    assert "† MUST on dtd: seeds disagree on epochs: 15 (seed 1, 2); 2 (seed 3)" in md
    assert _csv_rows(table)["MUST"]["protocol_mismatch"] == "True"
    assert _csv_rows(table)["FAIR"]["protocol_mismatch"] == "False"


def test_methods_evaluated_on_different_test_sets_are_flagged(runs_dir):
    write_result(runs_dir, "CuPL", "dtd", 1, 45.0, num_eval_images=12)
    md = to_markdown(_table(runs_dir))
    assert "‡ dtd: methods disagree on num_eval_images: 12 (CuPL); 30 (FAIR, ZeroshotCLIP)" in md
    header = next(line for line in md.splitlines() if line.startswith("| Method"))
    assert [c.strip() for c in header.strip("| ").split("|")] == [
        "Method", "dtd ‡", "eurosat", "oxford_pets", "Average"]


def test_per_dataset_protocol_values_are_listed_per_dataset(runs_dir):
    write_result(runs_dir, "MUST", "dtd", 1, 50.0, epochs=15)
    write_result(runs_dir, "MUST", "eurosat", 1, 50.0, epochs=5)
    proto = _table(runs_dir)["protocol"]["MUST"]
    assert proto["epochs"] == "15 [dtd]; 5 [eurosat]"


# ---------------------------------------------------------------------------- csv and files
def test_csv_has_mean_std_n_per_dataset_and_the_average(runs_dir):
    rows = _csv_rows(_table(runs_dir))
    assert list(rows) == ["ZeroshotCLIP", "FAIR"]
    fair, zs = rows["FAIR"], rows["ZeroshotCLIP"]
    assert float(fair["dtd_mean"]) == pytest.approx(63.0) and float(fair["dtd_std"]) == pytest.approx(2.9439, abs=1e-4)
    assert fair["dtd_n"] == "3" and zs["eurosat_n"] == "2"
    assert zs["oxford_pets_n"] == "0" and zs["oxford_pets_mean"] == ""
    assert float(fair["average_mean"]) == pytest.approx(68.0) and fair["average_datasets"] == "dtd eurosat"
    assert fair["std_kind"] == "population" and fair["metric"] == "accuracy" and fair["selection"] == "last epoch"


def test_other_metric(runs_dir):
    table = _table(runs_dir, metric="macro_f1")
    assert table["cells"]["FAIR", "dtd"]["mean"] == pytest.approx(62.0)
    with pytest.raises(UserError, match="--metric top5: unknown metric"):
        _table(runs_dir, metric="top5")


def test_cli_writes_markdown_and_csv_atomically(runs_dir, tmp_path, capsys):
    prefix = str(tmp_path / "out" / "table")
    assert main([str(runs_dir), "--format", "both", "--out", prefix]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["table.csv", "table.md"]  # no temp files left
    assert "63.00 ± 2.94" in open(prefix + ".md").read()
    assert open(prefix + ".csv").read().startswith("method,dtd_mean,dtd_std,dtd_n,")
    assert "63.00 ± 2.94" in capsys.readouterr().out


def test_glob_arguments(runs_dir, capsys):
    assert main([os.path.join(str(runs_dir), "*", "FAIR"), "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert "FAIR," in out and "ZeroshotCLIP" not in out


# ---------------------------------------------------------------------------- errors
def test_malformed_results_json_names_the_file(runs_dir):
    bad = write_result(runs_dir, "CuPL", "dtd", 1, 45.0)
    with open(bad, "w") as f:
        f.write('{"trainer": "CuPL", ')  # cut short
    with pytest.raises(UserError, match="cannot read results.json") as exc:
        _table(runs_dir)
    assert bad in str(exc.value)
    with open(bad, "w") as f:
        json.dump({"trainer": "CuPL", "dataset_key": "dtd", "seed": 1, "metrics": {"macro_f1": 3.0}}, f)
    with pytest.raises(UserError, match="metrics.accuracy is None, not a number") as exc:
        _table(runs_dir)
    assert bad in str(exc.value)
    with open(bad, "w") as f:
        json.dump({"dataset_key": "dtd", "seed": 1, "metrics": {}}, f)
    with pytest.raises(UserError, match="'trainer' is missing"):
        _table(runs_dir)


def test_cli_errors_are_one_line_with_exit_status_2(tmp_path, capsys):
    res = run_cli([sys.executable, "-m", "tools.results_table", str(tmp_path)])  # the module entry point
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert res.stderr.startswith("ERROR: no results.json found under {}".format(tmp_path))
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ERROR: run folder") and "does not exist" in err and len(err.strip().splitlines()) == 1


def test_two_results_for_one_seed_are_an_error(runs_dir, tmp_path_factory):
    other = tmp_path_factory.mktemp("other")
    write_result(other, "FAIR", "dtd", 1, 10.0)
    runs = [load_run(p) for p in find_results([str(runs_dir), str(other)])]
    with pytest.raises(UserError, match="two results for FAIR on dtd seed 1"):
        build_table(runs)
    # the same folder given twice is read once
    assert len(find_results([str(runs_dir), str(runs_dir)])) == len(find_results([str(runs_dir)]))


def test_filters_that_leave_nothing(runs_dir):
    with pytest.raises(UserError, match="no results left after filtering"):
        _table(runs_dir, datasets=["sun397"])


# ---------------------------------------------------------------------------- plots
def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_per_class_plot(runs_dir, tmp_path):
    out = str(tmp_path / "plots" / "per_class.png")
    assert plots.main(["per-class", "--dataset", "eurosat", "--methods", "ZeroshotCLIP", "FAIR", str(runs_dir),
                       "--out", out]) == 0
    width, height = _png_size(out)
    assert width > 400 and height > 300
    fair_runs = plots.label_runs([load_run(p) for p in find_results([str(runs_dir / "eurosat" / "FAIR")])])
    table, classes = plots.per_class_table(fair_runs)
    assert classes == CLASSES["eurosat"]
    assert table["FAIR"]["Forest"][0] == pytest.approx(73.0)  # mean over seeds of acc + 0
    assert table["FAIR"]["Annual Crop Land"][2] == 3


def test_curves_plot(runs_dir, tmp_path):
    write_result(runs_dir, "MUST", "dtd", 1, 50.0, epochs=5)
    out = str(tmp_path / "curves.png")
    assert plots.main(["curves", str(runs_dir), "--out", out]) == 0
    width, height = _png_size(out)
    assert width > 600 and height > 3 * 250  # one row per dataset with curves (dtd, eurosat, oxford_pets)


def test_curve_ticks_do_not_run_together():
    """FAIR's epochs 1-15 beside UPL's single point at epoch 50: ticks spread over the span, no label overlaps."""
    fig, ax = plots.plt.subplots(figsize=(5.5, 3.2))  # one panel of the curves figure
    ax.plot(list(range(1, 16)), [50.0] * 15)
    ax.plot([50], [45.0])
    plots._epoch_axis(ax, list(range(1, 16)) + [50])
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in ax.get_xticklabels() if t.get_text() and t.get_visible()]
    assert 3 <= len(boxes) <= 12
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:]))  # left to right, none overlapping
    plots._epoch_axis(ax, [1, 2, 3, 4, 5])  # a short run keeps one tick per epoch
    assert list(ax.get_xticks()) == [1, 2, 3, 4, 5]
    plots.plt.close(fig)


def test_plot_errors(runs_dir, tmp_path, capsys):
    zs_only = str(runs_dir / "dtd" / "ZeroshotCLIP")
    res = run_cli([sys.executable, "-m", "tools.plots", "curves", zs_only, "--out", str(tmp_path / "c.png")])
    assert res.returncode == 2 and res.stderr.startswith("ERROR: no run with a per-epoch history")
    assert plots.main(["per-class", "--dataset", "sun397", str(runs_dir), "--out", str(tmp_path / "p.png")]) == 2
    assert capsys.readouterr().err.startswith("ERROR: no results for dataset 'sun397'")
    assert plots.main(["per-class", "--dataset", "dtd", str(runs_dir), "--out", str(tmp_path / "p.jpg")]) == 2
    assert "give a file name ending in .png" in capsys.readouterr().err
    assert not [n for n in os.listdir(tmp_path) if n.endswith((".png", ".jpg"))]
