"""FAIR: each part on hand-made tensors, then the trainer on a miniature dataset with a tiny CLIP."""
import copy
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.conftest import REPO, build_seeded, run_cli, small_fair_cfg, train_py, unit_vectors
from fairclip.toolbox.errors import UserError
from fairclip.trainers._alignment import mean_description_embedding, select_top_crops
from fairclip.trainers._views import LocalCrops, sample_square_crop
from fairclip.trainers.fair import (
    ambiguity_weights, fixed_score, fuse_scores, learned_alignment_score,
)


# ---------------------------------------------------------------------------- parts
def test_square_crops_have_the_configured_side_and_stay_inside():
    rng = random.Random(0)
    for _ in range(500):
        w, h = rng.randint(20, 300), rng.randint(20, 300)
        left, top, side = sample_square_crop(w, h, 0.5, 0.9, rng)
        assert 0.5 * min(w, h) - 1 <= side <= 0.9 * min(w, h) + 1
        assert left >= 0 and top >= 0 and left + side <= w and top + side <= h


def test_local_crops_transform_shape():
    from fairclip.config import extend_cfg
    from fairclip.toolbox import get_cfg_default

    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.INPUT.SIZE = (32, 32)
    img = Image.new("RGB", (80, 50), (10, 200, 30))
    out = LocalCrops(cfg, n=5)(img)
    assert out.shape == (5, 3, 32, 32)


def test_top_k_selection_picks_the_most_relevant_crops():
    crops = unit_vectors(2, 6, 8)
    relevance = torch.tensor([[0.1, 0.9, 0.3, 0.8, -0.2, 0.5], [0.7, 0.0, 0.2, 0.1, 0.6, 0.65]])
    picked, rel = select_top_crops(crops, relevance, 3)
    assert sorted(rel[0].tolist()) == pytest.approx([0.5, 0.8, 0.9])
    assert torch.equal(picked[0], crops[0, [1, 3, 5]])
    assert torch.equal(picked[1], crops[1, [0, 5, 4]])


def test_las_with_all_crops_and_uniform_weights_is_the_mean_crop_score():
    g, c, a = unit_vectors(3, 16), unit_vectors(3, 5, 16, seed=1), unit_vectors(4, 16, seed=2)
    las = learned_alignment_score(g, c, a, top_k=5, tau=0.0)
    expected = F.normalize(c.mean(1), dim=-1) @ a.t()
    assert torch.allclose(las, expected, atol=1e-6)


def test_gamma_one_reproduces_the_fixed_score():
    g, c, w = unit_vectors(4, 16), unit_vectors(4, 8, 16, seed=1), unit_vectors(5, 16, seed=2)
    s_fix = fixed_score(g, c, w, tau=54.6)
    las = learned_alignment_score(g, c, unit_vectors(5, 16, seed=3), 4, 54.6)
    assert torch.equal(fuse_scores(s_fix, las, 1.0), s_fix)
    assert torch.equal(fuse_scores(s_fix, las, 0.0), las)


@pytest.mark.parametrize("rule", ["agreement", "margin", "entropy", "none"])
def test_ambiguity_weights_are_in_unit_interval(rule):
    s_fix, las = torch.randn(64, 10) * 0.1, torch.randn(64, 10) * 0.1
    fused = fuse_scores(s_fix, las, 0.5)
    w = ambiguity_weights(s_fix, las, fused, fused.argmax(1), rule)
    assert w.shape == (64,) and (w >= 0).all() and (w <= 1 + 1e-6).all()


def test_agreement_weight_is_one_when_both_heads_pick_the_label_and_small_when_they_disagree():
    s_fix = torch.tensor([[0.30, 0.20, 0.10], [0.30, 0.20, 0.10]])
    las = torch.tensor([[0.30, 0.25, 0.10], [0.10, 0.35, 0.10]])
    pseudo = torch.tensor([0, 0])
    w = ambiguity_weights(s_fix, las, fuse_scores(s_fix, las, 0.5), pseudo, "agreement")
    assert w[0] == pytest.approx(1.0)
    assert w[1] < 0.01


def test_margin_weight_ranks_confident_above_ambiguous():
    fused = torch.tensor([[0.40, 0.10, 0.10], [0.30, 0.29, 0.10]])
    w = ambiguity_weights(fused, fused, fused, fused.argmax(1), "margin")
    assert w[0] > 0.99 and w[1] < 0.7


# ---------------------------------------------------------------------------- trainer
@pytest.fixture(scope="module")
def mini_cars(tmp_path_factory):
    from fairclip.tools.make_miniature_data import make_stanford_cars

    root = tmp_path_factory.mktemp("data")
    make_stanford_cars(str(root), classes=3, per_class=6, size=40)
    return str(root)


def _snapshot(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def test_anchors_start_at_description_means_and_only_ln_and_anchors_train(mini_pets, tiny_clip, tmp_path):
    trainer = build_seeded(small_fair_cfg(mini_pets, tiny_clip, str(tmp_path / "run")))
    emb, mask = trainer.description_bank()
    assert torch.allclose(trainer.model.anchors, mean_description_embedding(emb, mask), atol=1e-6)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert "anchors" in trainable
    assert all(n == "anchors" or (n.startswith("clip.visual.") and ".ln" in n or "ln_" in n) for n in trainable)
    assert not any(n.startswith("clip.transformer.") for n in trainable)

    before = _snapshot(trainer)
    trainer.before_epoch()
    trainer.batch_idx = 0
    batch = next(iter(trainer.train_loader_x))
    trainer.forward_backward(batch)
    after = _snapshot(trainer)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= trainable  # something trained, nothing frozen moved
    assert "anchors" in changed
    # checkpoints hold exactly the trainable tensors
    assert set(trainer.model.state_dict()) == trainable


def test_no_train_label_reaches_the_loss(mini_pets, tiny_clip, tmp_path):
    """Same state, same views, different (even nonsense) train labels -> identical update."""
    trainer = build_seeded(small_fair_cfg(mini_pets, tiny_clip, str(tmp_path / "run")))
    batch = next(iter(trainer.train_loader_x))
    start_model = copy.deepcopy(trainer.model.state_dict())
    start_optim = copy.deepcopy(trainer.optim.state_dict())
    start_sched = copy.deepcopy(trainer.sched.state_dict())
    results = []
    for labels in (batch["label"], torch.randint(0, 3, batch["label"].shape), torch.full_like(batch["label"], -7)):
        trainer.model.load_state_dict(start_model)
        trainer.optim.load_state_dict(start_optim)
        trainer.sched.load_state_dict(start_sched)
        trainer.before_epoch()
        trainer.batch_idx = 0
        with torch.random.fork_rng():  # the same random re-cut of the crops (self-trained LAS) each time
            torch.manual_seed(0)
            out = trainer.forward_backward(dict(batch, label=labels))
        results.append((out["loss"].item(), _snapshot(trainer)))
    for loss, params in results[1:]:
        assert loss == results[0][0]
        assert all(torch.equal(params[n], results[0][1][n]) for n in params)


def test_bf16_keeps_fp32_master_weights_and_description_anchors_run(mini_pets, tiny_clip, tmp_path):
    trainer = build_seeded(small_fair_cfg(mini_pets, tiny_clip, str(tmp_path / "run"), "TRAINER.FAIR.PREC", "bf16",
                               "TRAINER.FAIR.ANCHORS", "description", "TRAINER.FAIR.WEIGHTING", "margin",
                               "TRAINER.FAIR.BALANCE", "running", "TRAINER.FAIR.TEST_LAS", "True"))
    assert trainer.model.anchors.dim() == 3
    trainer.before_epoch()
    trainer.batch_idx = 0
    out = trainer.forward_backward(next(iter(trainer.train_loader_x)))
    assert torch.isfinite(out["loss"])
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert 0 <= trainer.test() <= 100  # the final test with LAS on test-time crops


def test_bad_fair_key_values_fail_clearly(mini_pets, tiny_clip, tmp_path):
    out = train_py("--root", mini_pets, "--trainer", "FAIR", "--output-dir", tmp_path / "run",
                   "--dataset-config-file", os.path.join(REPO, "configs/datasets/oxford_pets.yaml"),
                   "--config-file", os.path.join(REPO, "configs/trainers/FAIR/vit_b32.yaml"),
                   "MODEL.BACKBONE.PATH", tiny_clip, "TRAINER.FAIR.TOP_K", "9")
    assert out.returncode == 2
    assert "ERROR: TRAINER.FAIR.TOP_K=9 must be between 1 and TRAINER.FAIR.N_CROPS=8" in out.stderr
    out = train_py("--root", mini_pets, "--trainer", "FAIR", "--output-dir", tmp_path / "run2",
                   "--dataset-config-file", os.path.join(REPO, "configs/datasets/oxford_pets.yaml"),
                   "--config-file", os.path.join(REPO, "configs/trainers/FAIR/vit_b32.yaml"),
                   "MODEL.BACKBONE.PATH", tiny_clip, "TRAINER.FAIR.GAMA", "0.3")
    assert out.returncode == 2 and "unknown config key 'TRAINER.FAIR.GAMA'" in out.stderr


def test_non_finite_loss_is_a_one_line_error(mini_pets, tiny_clip, tmp_path):
    """A NaN loss reaching the engine's backward (as a diverged run produces) is a UserError naming the
    epoch, the batch and the fix, not a bare FloatingPointError; nothing is updated."""
    trainer = build_seeded(small_fair_cfg(mini_pets, tiny_clip, str(tmp_path / "run")))
    trainer.epoch, trainer.batch_idx = 0, 2
    before = _snapshot(trainer)
    loss = sum(p.sum() for p in trainer.model.parameters() if p.requires_grad) * float("nan")
    with pytest.raises(UserError, match=r"^FAIR: non-finite loss at epoch 1 batch 3; lower OPTIM.LR or use "
                                        r"TRAINER.FAIR.PREC fp32$"):
        trainer.model_backward_and_update(loss)
    after = _snapshot(trainer)
    assert all(torch.equal(before[n], after[n]) for n in before)


# ---------------------------------------------------------------------------- the script, end to end
def _script_env(root, out):
    return {"DATA": root, "OUTPUT": out, "PYTHON": sys.executable}


def test_script_interrupted_run_resumes_and_eval_only_reproduces(mini_pets, tiny_clip, tmp_path):
    out = str(tmp_path / "output")
    # 3 epochs: after epoch 1's checkpoint two epochs remain, so the kill lands before the run ends
    opts = ["MODEL.BACKBONE.PATH", tiny_clip, "OPTIM.MAX_EPOCH", "3", "DATALOADER.NUM_WORKERS", "0",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "TRAINER.FAIR.N_CROPS", "3", "TRAINER.FAIR.TOP_K", "2"]
    script = os.path.join(REPO, "scripts/fair/main.sh")
    env = dict(os.environ, SEEDS="1", PYTHONPATH=REPO, **_script_env(mini_pets, out))
    run_dir = os.path.join(out, "oxford_pets/FAIR/vit_b32/seed1")
    first_ckpt = os.path.join(run_dir, "fair/model.pth.tar-1")

    # 1) start, and kill the whole process group once epoch 1's checkpoint exists (a real interruption)
    proc = subprocess.Popen(["bash", script, "oxford_pets", *opts], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not os.path.exists(os.path.join(run_dir, "fair/checkpoint")) and proc.poll() is None:
        assert time.time() < deadline, "no checkpoint written"
        time.sleep(0.02)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if os.path.exists(os.path.join(run_dir, "results.json")):
        pytest.skip("the run finished before it could be interrupted (machine too fast)")
    assert os.path.exists(first_ckpt)

    # 2) re-running the script resumes the unfinished seed from its last checkpoint
    res = run_cli(["bash", script, "oxford_pets", *opts], env=dict(SEEDS="1", **_script_env(mini_pets, out)))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming" in res.stdout
    logs = [f for f in os.listdir(run_dir) if f.startswith("log.txt")]
    assert len(logs) == 2  # the interrupted log is kept; the resumed run writes log.txt-<time>
    resumed_log = open(os.path.join(run_dir, sorted(logs)[-1])).read()
    assert "Found checkpoint" in resumed_log and "epoch [3/3]" in resumed_log and "epoch [1/3]" not in resumed_log
    result = json.load(open(os.path.join(run_dir, "results.json")))
    assert result["protocol"]["selection"] == "last epoch" and result["protocol"]["epochs"] == 3
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3]
    assert all("diag_pseudo_label_acc" in h for h in result["history"])
    assert all("test_acc" in h for h in result["history"])  # EVAL_EACH_EPOCH, then the final test
    assert set(result["metrics"]["per_class_accuracy"]) == set(json.load(open(
        os.path.join(mini_pets, "oxford_pets/split_zhou_OxfordPets.json")))["test"][i][2] for i in range(3))

    # 3) a finished seed is skipped
    res = run_cli(["bash", script, "oxford_pets", *opts], env=dict(SEEDS="1", **_script_env(mini_pets, out)))
    assert res.returncode == 0 and "skipping" in res.stdout

    # 4) --eval-only from the model dir reproduces the final accuracy
    eval_dir = str(tmp_path / "eval")
    res = train_py("--root", mini_pets, "--trainer", "FAIR", "--seed", "1", "--output-dir", eval_dir,
                   "--dataset-config-file", os.path.join(REPO, "configs/datasets/oxford_pets.yaml"),
                   "--config-file", os.path.join(REPO, "configs/trainers/FAIR/vit_b32.yaml"),
                   "--eval-only", "--model-dir", run_dir, *opts)
    assert res.returncode == 0, res.stderr[-2000:]
    again = json.load(open(os.path.join(eval_dir, "results.json")))
    assert again["metrics"]["accuracy"] == pytest.approx(result["metrics"]["accuracy"])
    assert again["protocol"]["evaluated_epoch"] == 3

    # 5) --eval-only without --model-dir is an error for a trained method
    res = train_py("--root", mini_pets, "--trainer", "FAIR", "--output-dir", str(tmp_path / "e2"),
                   "--dataset-config-file", os.path.join(REPO, "configs/datasets/oxford_pets.yaml"),
                   "--config-file", os.path.join(REPO, "configs/trainers/FAIR/vit_b32.yaml"),
                   "--eval-only", *opts)
    assert res.returncode == 2 and "--eval-only needs --model-dir" in res.stderr


def test_done_criterion_three_seeds(mini_cars, tiny_clip, tmp_path):
    """`DATA=<tiny root> bash scripts/fair/main.sh stanford_cars MODEL.BACKBONE.PATH <tiny.pt> OPTIM.MAX_EPOCH 2`."""
    out = str(tmp_path / "output")
    res = run_cli(["bash", os.path.join(REPO, "scripts/fair/main.sh"), "stanford_cars", "MODEL.BACKBONE.PATH",
                   tiny_clip, "OPTIM.MAX_EPOCH", "2", "DATALOADER.NUM_WORKERS", "0",
                   "TRAINER.FAIR.EVAL_EACH_EPOCH", "False"], env=_script_env(mini_cars, out))
    assert res.returncode == 0, res.stderr[-3000:]
    for seed in (1, 2, 3):
        result = json.load(open(os.path.join(out, "stanford_cars/FAIR/vit_b32/seed{}/results.json".format(seed))))
        assert result["seed"] == seed and result["trainer"] == "FAIR" and result["protocol"]["epochs"] == 2


def test_per_epoch_diagnostic_evaluation_does_not_change_training(mini_pets, tiny_clip, tmp_path):
    """Evaluating the test split after each epoch (history only) leaves the trained weights identical."""
    finals = []
    for flag in ("True", "False"):
        trainer = build_seeded(small_fair_cfg(mini_pets, tiny_clip, str(tmp_path / flag), "OPTIM.MAX_EPOCH", "2",
                                   "TRAINER.FAIR.EVAL_EACH_EPOCH", flag))
        trainer.train()
        finals.append(_snapshot(trainer))
        assert ("test_acc" in trainer.history[0]) == (flag == "True")
    assert all(torch.equal(finals[0][n], finals[1][n]) for n in finals[0])
