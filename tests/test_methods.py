"""The method registry (tools/methods.py), the scaffold (tools/new_trainer.py) and the small frictions of
a first use: scripts that find every method, help texts, docs that cite only what the repository has,
loader workers capped to the CPUs, no pkg_resources warning, "did you mean" for a typo'd key.

The scaffolded ``--like must`` trainer runs end to end through scripts/compare.sh in
tests/test_compare_e2e.py; the other two starting points run here in-process, one epoch on a
miniature DTD tree."""
import importlib.util
import os
import os.path as osp
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO, build_seeded, run_cli
from fairclip.tools import methods as method_registry
from fairclip.tools import new_trainer
from fairclip.tools.run_jobs import plan_jobs

SHIPPED = ["zsclip", "cupl", "wca", "upl", "must", "lafter", "reclip", "dpa", "fair"]


# ---------------------------------------------------------------------------- the registry
def test_the_methods_come_from_the_scripts_and_name_registered_trainers(capsys):
    from fairclip.toolbox import TRAINER_REGISTRY
    from fairclip import trainers  # noqa: F401  (registers them)

    found = method_registry.discover()
    names = [m.name for m in found]
    assert [n for n in names if n in SHIPPED] == SHIPPED  # '# order:' headers: the table order
    for m in found:
        assert m.trainer in TRAINER_REGISTRY.registered_names(), m
        assert osp.isfile(osp.join(REPO, "configs", "trainers", m.trainer, "vit_b32.yaml")), m
    trains = {m.name for m in found if m.trains}
    assert {"upl", "must", "lafter", "reclip", "dpa", "fair"} <= trains and not {"zsclip", "cupl", "wca"} & trains
    assert method_registry.find("ZEROSHOTCLIP", found).title == "zero-shot CLIP"
    with pytest.raises(method_registry.UnknownMethod, match="unknown method 'fiar'; choose from zsclip cupl"):
        method_registry.find("fiar", found)
    assert method_registry.main(["--shell", "fair", "cupl"]) == 0
    assert capsys.readouterr().out == "fair FAIR train FAIR\ncupl CuPL eval CuPL\n"
    assert method_registry.main(["--shell", "nope"]) == 2
    assert capsys.readouterr().err.startswith("ERROR: unknown method 'nope'")


def test_a_new_method_is_known_to_the_tools_without_any_list(tmp_path):
    """A checkout with only scripts/ and configs/: the scaffold adds a method that the registry and the job
    runner know at once (compare.sh, demo.sh, results_table and plots read the same registry)."""
    repo = tmp_path / "repo"
    shutil.copytree(osp.join(REPO, "scripts"), repo / "scripts")
    shutil.copytree(osp.join(REPO, "configs"), repo / "configs")
    shutil.copytree(osp.join(REPO, "trainers"), repo / "trainers", ignore=shutil.ignore_patterns("__pycache__"))
    assert new_trainer.main(["Entropy", "--like", "zsclip", "--title", "entropy", "--order", "15",
                             "--repo", str(repo)]) == 0
    found = method_registry.discover(str(repo))
    names = [m.name for m in found]
    assert names.index("zsclip") < names.index("entropy") < names.index("cupl")  # order 15
    new = found[names.index("entropy")]
    assert (new.trainer, new.mode, new.title) == ("Entropy", "eval", "entropy")
    jobs = plan_jobs(["dtd"], ["ENTROPY"], [4], str(tmp_path / "out"), "vit_b32", repo=str(repo))
    assert [(j["method"], j["trainer"]) for j in jobs] == [("entropy", "Entropy")]
    assert os.access(repo / "scripts" / "entropy" / "main.sh", os.X_OK)
    # the shell scripts see it too: demo.sh lists it in its METHODS check (nothing runs: THREADS is bad)
    os.makedirs(repo / "tools")
    shutil.copy(osp.join(REPO, "tools", "methods.py"), repo / "tools" / "methods.py")
    res = run_cli(["bash", str(repo / "scripts" / "demo.sh")],
                  env={"METHODS": "nope", "PYTHON": sys.executable, "DATA": str(tmp_path / "d")})
    assert res.returncode == 2 and "unknown method 'nope' in METHODS (known: {} )".format(" ".join(names)) in res.stderr


def test_the_scaffold_refuses_names_it_cannot_use(tmp_path, capsys):
    for argv, message in [
        (["2fast"], "must be a Python identifier"),
        (["class"], "must be a Python identifier"),
        (["Must"], "NAME Must is taken: scripts/must/main.sh runs trainer MUST"),
        (["zeroshotclip", "--like", "zsclip"], "method 'zsclip' (scripts/zsclip/main.sh) runs trainer ZeroshotCLIP"),
        (["FAIRish", "--like", "fair", "--title", " "], "--title must be one non-empty line"),
    ]:
        assert new_trainer.main(argv + ["--repo", REPO]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("ERROR: ") and message in err, (argv, err)
    repo = tmp_path / "repo"
    os.makedirs(repo / "scripts")
    assert new_trainer.main(["Twice", "--repo", str(repo)]) == 0
    assert new_trainer.main(["Twice", "--repo", str(repo)]) == 2
    assert "already exist; pick another NAME or pass --force" in capsys.readouterr().err
    assert new_trainer.main(["Twice", "--like", "zsclip", "--force", "--repo", str(repo)]) == 0
    assert "Twice eval" in open(repo / "scripts" / "twice" / "main.sh").read()


def _load_scaffold(tmp_path, name, like, monkeypatch):
    """Write the scaffold of ``name`` into a temporary checkout and import its trainer module into this
    process (as fairclip.trainers.<name>, registering the trainer), so train.py's config code sees its keys.
    Returns the scaffold's method config."""
    from fairclip import trainers

    repo = tmp_path / "repo"
    os.makedirs(repo / "scripts", exist_ok=True)
    new_trainer.scaffold(name, like=like, repo=str(repo))
    module_name = "fairclip.trainers." + name.lower()
    spec = importlib.util.spec_from_file_location(module_name, str(repo / "trainers" / (name.lower() + ".py")))
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, module_name, module)
    spec.loader.exec_module(module)
    monkeypatch.setattr(trainers, "MODULES", trainers.MODULES + [module])
    return str(repo / "configs" / "trainers" / name / "vit_b32.yaml")


@pytest.mark.parametrize("like", ["fair", "zsclip"])
def test_scaffolded_trainers_run(like, mini_dtd, tiny_clip, tmp_path, monkeypatch, capsys):
    """The other two starting points run as written (one epoch); loader workers above the CPUs are capped."""
    import json

    from train import build_parser, setup_cfg

    name = "Scaffold" + like.capitalize()
    config = _load_scaffold(tmp_path, name, like, monkeypatch)
    out = str(tmp_path / "out")
    cpus = len(os.sched_getaffinity(0))
    argv = ["--root", mini_dtd, "--trainer", name, "--seed", "1", "--output-dir", out, "--config-file", config,
            "--dataset-config-file", osp.join(REPO, "configs", "datasets", "dtd.yaml"),
            "MODEL.BACKBONE.PATH", tiny_clip, "DATALOADER.NUM_WORKERS", str(cpus + 1), "OPTIM.MAX_EPOCH", "1",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "6", "VERBOSE", "False"]
    if like == "fair":
        argv += ["TRAINER.{}.N_CROPS".format(name.upper()), "2"]
    trainer = build_seeded(setup_cfg(build_parser().parse_args(argv)))
    assert trainer.cfg.DATALOADER.NUM_WORKERS == cpus
    assert capsys.readouterr().out.count("DATALOADER.NUM_WORKERS {} -> {}".format(cpus + 1, cpus)) == 1
    if like == "zsclip":
        trainer.test()
    else:
        trainer.train()
    record = json.load(open(osp.join(out, "results.json")))
    assert record["trainer"] == name and 0.0 <= record["metrics"]["accuracy"] <= 100.0
    if like == "fair":
        assert record["protocol"]["epochs"] == 1 and "diag_pseudo_label_acc" in record["history"][0]
        assert osp.isfile(osp.join(out, name.lower(), "checkpoint"))


# ---------------------------------------------------------------------------- first-use frictions
def test_help_texts_are_ours_and_no_pkg_resources_warning():
    from train import build_parser

    text = build_parser().format_help()
    trainers = " ".join(text.split("trainers (--trainer):")[1].split("datasets (")[0].split())
    assert all(t + "," in trainers + "," for t in ("CuPL", "DPA", "FAIR", "MUST", "UPL", "WCA", "ZeroshotCLIP"))
    datasets = " ".join(text.split("datasets (--dataset-config-file configs/datasets/<key>.yaml):")[1].split())
    assert datasets.startswith("birdsnap, caltech101, cub, dtd, eurosat,") and "synthetic, ucf101" in datasets
    assert not re.search(r"CNN|DA/DG", text) and "--source-domains" in text  # CoOp's flag names stay
    # a fresh interpreter with warnings shown: importing clip through us prints no pkg_resources warning
    res = run_cli([sys.executable, "-W", "default", "-c", "import fairclip.clip_backbone.loading"])
    assert res.returncode == 0 and "pkg_resources" not in res.stderr, res.stderr
    res = run_cli(["bash", osp.join(REPO, "tools", "gpu_check.sh"), "--help"])
    assert res.returncode == 0 and res.stdout.lstrip().startswith("The GPU checks") and "--help" in res.stdout
    assert not osp.exists(osp.join(REPO, "--help"))


def test_unknown_config_keys_get_a_suggestion():
    from fairclip.config import yacs_message

    def message(key):
        return yacs_message(KeyError("Non-existent config key: " + key))

    assert message("TRAINER.FAIR.N_CROP").endswith("(did you mean TRAINER.FAIR.N_CROPS?)")
    assert message("optim.max_epoch").endswith("(did you mean OPTIM.MAX_EPOCH?)")
    assert "(did you mean TRAINER.FAIR.N_CROPS or TRAINER.WCA.N_CROPS" in message("TRAINER.N_CROPS")  # another level
    assert message("DATALOADER.NUM_WORKER").endswith("(did you mean DATALOADER.NUM_WORKERS?)")
    assert "check the spelling" in message("FOO.BAR")


def _repo_text_files():
    """The repository's own text files: what git tracks or would track (never a virtualenv such as CI's
    .ci-venv, outputs or data); outside a git checkout, a walk that skips those folders."""
    ends = (".py", ".md", ".sh", ".yaml", ".txt", ".toml")
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        listed = None
    if listed is not None:
        for rel in listed:
            path = osp.join(REPO, rel)
            if rel.endswith(ends) and osp.isfile(path):
                yield path
        return
    skip = {".git", "__pycache__", ".pytest_cache", "output", "data", "gpu_check", ".whl"}
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in skip and not d.endswith(".egg-info")
                   and not osp.isfile(osp.join(root, d, "pyvenv.cfg"))]
        for name in files:
            if name.endswith(ends):
                yield osp.join(root, name)


def test_docs_are_self_contained():
    """What the code and docs cite exists in the repository: no design sections of an outside document,
    and every docs/<page>.md named anywhere is there."""
    cited = set()
    this = osp.abspath(__file__)
    for path in _repo_text_files():
        text = open(path, encoding="utf-8", errors="replace").read()
        rel = osp.relpath(path, REPO)
        if path != this:
            assert "DESIGN" not in text and "\u00a7" not in text and "../shared" not in text, rel
        cited.update(re.findall(r"docs/[A-Za-z_]+\.md", text))
    missing = sorted(c for c in cited if not osp.isfile(osp.join(REPO, c)))
    assert not missing and "docs/adding_a_trainer.md" in cited
    readme = open(osp.join(REPO, "README.md")).read()
    assert "docs/adding_a_trainer.md" in readme and "`config`" not in readme
    assert "docs/adding_a_trainer.md" in open(osp.join(REPO, "docs", "DEVELOPING.md")).read()
