"""FAIR's self-trained LAS, gamma schedules and frozen anchors; the ablation runner end to end on a
miniature tree; the CuPL text source (the `cupl` shorthand and the fetcher, against a local HTTP server)."""
import functools
import http.server
import json
import os
import sys
import threading

import pytest
import torch

from tests.conftest import REPO, build_seeded, make_dataset_cfg, run_cli, small_fair_cfg
from tests.test_ddp import _free_port
from fairclip.toolbox.errors import UserError
from fairclip.trainers._clip_base import visual_layernorms
from fairclip.trainers.fair import gamma_at


# ---------------------------------------------------------------------------- gamma over training
def _curve(schedule, warmup=1, epochs=4, batches=5, gamma=0.5, end=0.0):
    return [gamma_at(schedule, gamma, end, warmup, e, i, batches, epochs) for e in range(epochs) for i in range(batches)]


def test_gamma_schedules():
    assert set(_curve("constant")) == {0.5}
    las = _curve("las", warmup=2)
    assert las[:10] == [0.5] * 10 and las[10:] == [0.0] * 10
    lin = _curve("linear", warmup=1, end=0.1)
    assert lin[:5] == [0.5] * 5  # the warm-up epoch
    assert lin[5] == pytest.approx(0.5) and lin[-1] == pytest.approx(0.1)  # first step after it, last step
    assert all(a >= b for a, b in zip(lin, lin[1:]))  # monotone towards GAMMA_END
    assert _curve("linear", warmup=0, gamma=1.0)[0] == 1.0  # no warm-up: starts at GAMMA at once
    with pytest.raises(UserError, match="GAMMA_SCHEDULE='cosine' is not one of constant, linear, las"):
        gamma_at("cosine", 0.5, 0.0, 0, 1, 0, 5, 4)


# ---------------------------------------------------------------------------- the self-trained LAS
def test_strong_crops_are_sub_squares_of_the_crop_or_its_mirror():
    from fairclip.trainers.fair import jitter_crops

    g = torch.Generator().manual_seed(0)
    images = torch.randn(64, 3, 16, 16, generator=g)
    whole = jitter_crops(images, (1.0, 1.0))  # full area: the crop itself or its mirror image
    same = (whole - images).abs().amax(dim=(1, 2, 3)) < 1e-5
    mirror = (whole - images.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert bool((same | mirror).all()) and 10 < int(mirror.sum()) < 54
    # a constant image stays constant (the box never leaves the crop), and the shape is kept
    flat = jitter_crops(torch.full((32, 3, 16, 16), 0.7), (0.3, 0.6))
    assert flat.shape == (32, 3, 16, 16) and torch.allclose(flat, torch.full_like(flat, 0.7))
    small = jitter_crops(images, (0.25, 0.25))  # a quarter of the area: twice magnified, so smoother
    assert (small[..., 1:] - small[..., :-1]).abs().mean() < 0.8 * (images[..., 1:] - images[..., :-1]).abs().mean()


def test_crop_term_gradient_reaches_the_anchors_and_the_layernorms(mini_pets, tiny_clip, tmp_path):
    trainer = build_seeded(small_fair_cfg(mini_pets, tiny_clip, str(tmp_path / "run"), "TRAINER.FAIR.LAS_LOSS_WEIGHT",
                                          "1.0"))
    trainer.before_epoch()
    trainer.batch_idx = 0
    batch = next(iter(trainer.train_loader_x))
    weak, crops = batch["img"], batch["img3"]
    b, n = crops.shape[:2]
    pseudo, weights, _, _ = trainer.pseudo_labels(weak, crops)
    index, crop_w = trainer._las_pick
    assert index.shape == (b, 2) and crop_w.shape == (b, 2)
    # the crops chosen by the no-grad pass are the images that get re-encoded
    picked = trainer.gather_crops(crops, index)
    with torch.no_grad():
        all_feats = trainer.encode_images(crops.flatten(0, 1)).view(b, n, -1)
        chosen = trainer.encode_images(picked.flatten(0, 1)).view(b, 2, -1)
    assert torch.allclose(chosen, all_feats[torch.arange(b)[:, None], index], atol=1e-5)

    trainer.model.zero_grad(set_to_none=True)
    feats, class_vectors = trainer.train_model(picked.flatten(0, 1))
    loss = trainer.las_loss(feats.view(b, 2, -1), crop_w, pseudo, torch.ones_like(weights), class_vectors)
    loss.backward()  # the crop term alone
    assert trainer.model.anchors.grad is not None and trainer.model.anchors.grad.abs().sum() > 0
    for module in visual_layernorms(trainer.clip_model):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0

    # the step's loss includes the term (weight 1 here; off by default) and reports it
    trainer.model.zero_grad(set_to_none=True)
    out = trainer.forward_backward(batch)
    assert out["loss_las"] > 0
    assert out["loss"] == pytest.approx((out["loss_st"] + out["loss_bal"] + out["loss_las"]).item(), rel=1e-5)


def test_frozen_anchors_stay_and_the_schedule_sets_gamma(mini_pets, tiny_clip, tmp_path):
    trainer = build_seeded(small_fair_cfg(mini_pets, tiny_clip, str(tmp_path / "run"), "TRAINER.FAIR.LEARN_ANCHORS",
                                          "False", "TRAINER.FAIR.GAMMA_SCHEDULE", "las", "TRAINER.FAIR.GAMMA_WARMUP_EPOCHS",
                                          "0"))
    start = trainer.model.anchors.detach().clone()
    assert "anchors" not in trainer.model.state_dict()  # not trained, not checkpointed (rebuilt from the texts)
    trainer.before_epoch()
    trainer.batch_idx = 0
    trainer.forward_backward(next(iter(trainer.train_loader_x)))
    assert torch.equal(trainer.model.anchors, start)
    assert trainer.current_gamma() == 0.0 and trainer._epoch_stats["gamma_sum"] == 0.0


@pytest.mark.parametrize("opts,message", [
    (("TRAINER.FAIR.GAMMA_SCHEDULE", "cosine"), "TRAINER.FAIR.GAMMA_SCHEDULE='cosine' is not one of constant, linear, las"),
    (("TRAINER.FAIR.LAS_LOSS_WEIGHT", "-1.0"), "TRAINER.FAIR.LAS_LOSS_WEIGHT=-1.0 must be >= 0"),
    (("TRAINER.FAIR.GAMMA_END", "1.5"), "TRAINER.FAIR.GAMMA_END=1.5 must be in [0, 1]"),
])
def test_bad_schedule_keys_fail_clearly(mini_pets, tiny_clip, tmp_path, opts, message):
    with pytest.raises(UserError) as info:
        build_seeded(small_fair_cfg(mini_pets, tiny_clip, str(tmp_path / "run"), *opts))
    assert str(info.value).startswith(message)


# ---------------------------------------------------------------------------- the ablation runner
def test_ablation_plan_checks_keys_and_skips_variants_equal_to_full(tmp_path, capsys):
    from fairclip.tools import ablation

    variants = tmp_path / "v.yaml"
    variants.write_text("full: {}\nsame: {TRAINER.FAIR.GAMMA: 0.5}\nlin: {TRAINER.FAIR.GAMMA_SCHEDULE: linear}\n")
    assert ablation.main(["plan", "dtd", "--out-dir", str(tmp_path / "abl"), "--variants", str(variants)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["run full", "same same full", "run lin TRAINER.FAIR.GAMMA_SCHEDULE linear"]
    variants.write_text("full: {}\nbad: {TRAINER.FAIR.GAMA: 0.5}\n")
    assert ablation.main(["plan", "dtd", "--out-dir", str(tmp_path / "abl"), "--variants", str(variants)]) == 2
    assert "variant 'bad': unknown config key 'TRAINER.FAIR.GAMA'" in capsys.readouterr().err
    variants.write_text("base: {}\n")
    assert ablation.main(["plan", "dtd", "--out-dir", str(tmp_path / "abl"), "--variants", str(variants)]) == 2
    assert "has no 'full' variant" in capsys.readouterr().err


def test_ablation_script_end_to_end_two_variants_one_seed(mini_pets, tmp_path):
    """`bash scripts/fair/ablate.sh oxford_pets` with 2 variants x 1 seed, tiny CLIP at 32 px, 1 epoch."""
    from fairclip.tools.make_tiny_clip import save_tiny_clip

    clip32 = save_tiny_clip(str(tmp_path / "tiny32.pt"), "state_dict", resolution=32, patch=8)
    out = tmp_path / "output"
    opts = ["MODEL.BACKBONE.PATH", clip32, "INPUT.SIZE", "(32, 32)", "OPTIM.MAX_EPOCH", "1", "DATALOADER.NUM_WORKERS",
            "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "TRAINER.FAIR.N_CROPS", "2", "TRAINER.FAIR.TOP_K", "1",
            "TRAINER.FAIR.EVAL_EACH_EPOCH", "False"]
    env = {"DATA": mini_pets, "OUTPUT": str(out), "SEEDS": "1", "VARIANTS": "las_loss_on", "PYTHON": sys.executable}
    res = run_cli(["bash", os.path.join(REPO, "scripts/fair/ablate.sh"), "oxford_pets", *opts], env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    abl = out / "fair_ablation" / "oxford_pets"
    for name in ("full", "las_loss_on"):
        result = json.load(open(str(abl / name / "oxford_pets" / "FAIR" / "vit_b32" / "seed1" / "results.json")))
        assert result["protocol"]["variant"] == name
        assert result["method_keys"]["LAS_LOSS_WEIGHT"] == (1.0 if name == "las_loss_on" else 0.0)
        assert result["protocol"]["text"]["description_source"] == "ours"
        assert {"gamma", "diag_las_head_acc", "diag_fixed_head_acc"} <= set(result["history"][-1])
    table = (abl / "ablation.md").read_text()
    assert "| full " in table and "| las_loss_on " in table and "LAS_LOSS_WEIGHT 1.0" in table
    assert "Δ to full" in res.stdout
    assert (abl / "ablation.png").stat().st_size > 1000


# ---------------------------------------------------------------------------- CuPL descriptions
def test_cupl_shorthand_resolves_to_the_fetched_file_or_says_how_to_get_it(tmp_path):
    from fairclip import datasets

    cfg = make_dataset_cfg(tmp_path, "oxford_pets", "DATASET.DESCRIPTIONS", "cupl")
    with pytest.raises(UserError, match=r"fetch CuPL's files once with `python -m tools.fetch_descriptions cupl "
                                        r"--root "):
        datasets.descriptions_path(cfg)
    target = tmp_path / "descriptions" / "cupl" / "oxford_pets.json"
    target.parent.mkdir(parents=True)
    target.write_text("{}")
    assert datasets.descriptions_path(cfg) == str(target) and datasets.description_source(cfg) == "cupl"
    with pytest.raises(UserError, match="CuPL published no descriptions for 'eurosat'"):
        datasets.descriptions_path(make_dataset_cfg(tmp_path, "eurosat", "DATASET.DESCRIPTIONS", "cupl"))
    assert datasets.description_source(make_dataset_cfg(tmp_path, "dtd")) == "ours"
    assert datasets.description_source(make_dataset_cfg(tmp_path, "dtd", "DATASET.DESCRIPTIONS", str(target))) == "file"


@pytest.fixture
def http_folder(tmp_path, monkeypatch):
    """A local HTTP server over a temporary folder (the tests' proxy variables bypassed for it)."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, "http://127.0.0.1:{}".format(server.server_address[1])
    server.shutdown()
    server.server_close()


def test_fetch_cupl_downloads_and_renames_classes_to_ours(http_folder, tmp_path, capsys):
    from fairclip.datasets.texts import CUPL_FILES, load_descriptions, read_classnames
    from fairclip.tools import fetch_descriptions

    folder, url = http_folder
    ours = read_classnames("oxford_flowers")
    aliases = fetch_descriptions.CUPL_ALIASES["oxford_flowers"]
    # CuPL's spelling: other case and punctuation, and its own names for three classes
    fake = {aliases.get(c, c.replace("-", " ").title()): ["A photo of {}.".format(c), " "] for c in ours}
    served = folder / CUPL_FILES["oxford_flowers"]
    served.parent.mkdir(parents=True)
    served.write_text(json.dumps(fake))
    root = tmp_path / "data"
    assert fetch_descriptions.main(["cupl", "--root", str(root), "--datasets", "oxford_flowers", "--base-url", url]) == 0
    written = root / "descriptions" / "cupl" / "oxford_flowers.json"
    converted = json.load(open(str(written)))
    assert list(converted) == ours and converted["ball moss"] == ["A photo of ball moss."]
    assert load_descriptions(str(written), ours)[0] == ["A photo of {}.".format(ours[0])]
    assert (root / "descriptions" / "cupl" / "raw" / "flower_prompts_full.json").is_file()


def test_fetch_cupl_offline_is_one_clear_line(tmp_path, capsys, monkeypatch):
    from fairclip.tools import fetch_descriptions

    port = _free_port()  # a port nobody listens on
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    code = fetch_descriptions.main(["cupl", "--root", str(tmp_path), "--datasets", "dtd",
                                    "--base-url", "http://127.0.0.1:{}".format(port)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("ERROR: cannot download http://127.0.0.1:{}/".format(port)) and "no network?" in err[0]
    assert not (tmp_path / "descriptions" / "cupl" / "dtd.json").exists()
