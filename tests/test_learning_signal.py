"""Learning signal on the synthetic world (docs/synthetic.md): the tiny CLIP's zero-shot accuracy on the
target is informative but far from perfect, the self-training methods raise it over several seeds, and
FAIR trained on shuffled pseudo-labels does not.

Every run uses the method's ``per_dataset/synthetic.yaml`` (the demo's schedule) and runs in-process
(``train.py``'s setup_cfg + build_trainer), so a failure here is a failure of what ``scripts/demo.sh`` runs.
The world is built once and cached (tests/synthetic_world.py: about 1.5 minutes on 2 cores when the
cache is empty); the whole file takes about 3 minutes from an empty cache, under 2 with it.

Thresholds are derived from measurements (seeds 1-3 on the default world, whose tiny CLIP is pretrained
with seed 0 on 2 threads; in brackets three more worlds: seed 1 on 2 threads | seed 2 on 1 thread |
seed 0 on 1 thread) with a safety factor of about two, so that a method that stops learning fails while the spread between seeds
and worlds (pretraining differs in its last bits across thread counts and CPUs) does not.
"""
import json
import os

import pytest
import torch

from tests.conftest import REPO, build_seeded, trainer_cfg
from tests.synthetic_world import build_synthetic_world
from fairclip.toolbox import TRAINER_REGISTRY
from fairclip.trainers.fair import FAIR

NUM_CLASSES = 27
CHANCE = 100.0 / NUM_CLASSES
SEEDS = (1, 2, 3)

# Zero-shot accuracy on the target test split (648 images): measured 42.6 % (templates) and 42.7 %
# (descriptions) [48.9, 50.6 | 52.3, 51.9 | 34.3, 32.6]; docs/synthetic.md: 32.6-51.4 % over six tiny CLIPs.
# Below 20 % the pretraining did not transfer (chance is 3.7 %); above 80 % the shift leaves nothing to adapt.
ZERO_SHOT_MIN = 20.0
ZERO_SHOT_MAX = 80.0

# Gain over the zero-shot classifier the method starts from (FAIR: the mean-description anchors, i.e.
# CuPL; LaFTer: its text classifier, trained on the descriptions and templates, i.e. CuPL's texts; MUST, DPA
# and ReCLIP: the template classifier, i.e. ZeroshotCLIP), in accuracy points.
# Measured, seeds 1 / 2 / 3:
#   FAIR +11.6 / +10.6 / +10.3, mean 10.8  [mean  9.0 | 10.6 | 16.7]
#   MUST  +6.2 /  +8.2 /  +6.6, mean  7.0  [mean  5.2 |  6.1 |  7.6]
#   DPA  +14.0 / +12.2 / +11.3, mean 12.5  [mean  7.9 | 11.5 | 11.4]
#   LaFTer +2.2 /  +5.4 /  +7.7, mean  5.1  (default world only; its synthetic schedule, 6 epochs)
#   ReCLIP +4.2 /  +4.2 /  +4.2, mean  4.2  (default world only; without the projection: its synthetic.yaml)
# (MUST and DPA on the default world re-measured after the parity fixes of docs/parity.md and the
# exact-resume loader generators; in brackets the other worlds as measured before them:
# +5.4 / +6.0 / +6.8 and +13.9 / +10.8 / +10.2 here then)
# (every seed of every world: docs/synthetic.md, "Learning-signal tests")
# Required: a mean gain of at least half the measured mean, and every seed clearly positive.
MIN_MEAN_GAIN = {"FAIR": 5.0, "MUST": 3.0, "DPA": 5.0, "LaFTer": 2.5, "ReCLIP": 2.0}
MIN_SEED_GAIN = 2.0  # points (one test image is 0.15); the smallest measured seed gain is 4.6
# LaFTer's weakest seed gains only 2.2 (on this world its pseudo-labels improve for about 6 epochs, then the
# teacher, which reads the same drifting encoder, degrades): each of its seeds must gain half of that.
SEED_GAIN_FLOOR = {"LaFTer": 1.0}
STARTS_FROM = {"FAIR": "CuPL", "MUST": "ZeroshotCLIP", "DPA": "ZeroshotCLIP", "LaFTer": "CuPL",
               "ReCLIP": "ZeroshotCLIP"}

# FAIR with its pseudo-labels shuffled across the batch, seed 1: measured 19.3 %, 23 points below its
# zero-shot start (seeds 2 and 3: 20.8 and 17.9 %) [33.2 %, 17 below | 26.1 %, 26 below | 19.3 %, 13
# below]. It must not beat zero-shot by more than the tolerance, and must stay far below real FAIR.
SHUFFLED_TOLERANCE = 2.0
SHUFFLED_BELOW_FAIR = 10.0


@TRAINER_REGISTRY.register()
class FAIRShuffledPseudoLabels(FAIR):
    """Test-only broken FAIR: each batch's pseudo-labels are permuted among its images before the loss,
    so the labels keep FAIR's class mix but no longer belong to their images."""

    def pseudo_labels(self, weak, crops):
        pseudo, weights, s_fix, las = super().pseudo_labels(weak, crops)
        order = torch.randperm(pseudo.numel(), device=pseudo.device)
        return pseudo[order], weights, s_fix, las


@pytest.fixture(scope="module")
def world():
    return build_synthetic_world()


def _run(world, trainer, seed, out, config_of=None):
    """One run as scripts/<method>/main.sh does it (method config + per_dataset/synthetic.yaml), in-process;
    returns the final test accuracy read from its results.json."""
    method = config_of or trainer
    per_dataset = os.path.join(REPO, "configs", "trainers", method, "per_dataset", "synthetic.yaml")
    runner = build_seeded(trainer_cfg(
        trainer, "synthetic", world["root"], out, "MODEL.BACKBONE.PATH", world["clip_path"], "VERBOSE", "False",
        seed=seed, method=method, extra_config_files=[per_dataset]))
    if runner.get_model_names():
        runner.train()  # ends with the final test, which writes results.json
    else:
        runner.test()
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)["metrics"]["accuracy"]


@pytest.fixture(scope="module")
def accuracy(world, tmp_path_factory):
    """``accuracy(trainer, seed)``: the run's test accuracy, each run done once per module."""
    done = {}

    def get(trainer, seed=1, config_of=None):
        key = (trainer, seed)
        if key not in done:
            out = str(tmp_path_factory.mktemp("{}-seed{}".format(trainer, seed)))
            done[key] = _run(world, trainer, seed, out, config_of)
        return done[key]

    return get


@pytest.mark.parametrize("trainer", ["ZeroshotCLIP", "CuPL"])
def test_zero_shot_is_well_above_chance_and_well_below_perfect(accuracy, trainer):
    acc = accuracy(trainer)
    assert ZERO_SHOT_MIN <= acc <= ZERO_SHOT_MAX, (
        "{} zero-shot accuracy {:.1f}% is outside [{}, {}] (chance {:.1f}%): the synthetic world or the tiny "
        "CLIP's pretraining changed".format(trainer, acc, ZERO_SHOT_MIN, ZERO_SHOT_MAX, CHANCE))


@pytest.mark.parametrize("trainer", ["FAIR", "MUST", "DPA", "LaFTer", "ReCLIP"])
def test_self_training_improves_on_zero_shot_over_seeds(accuracy, trainer):
    start = accuracy(STARTS_FROM[trainer])
    gains = [accuracy(trainer, seed) - start for seed in SEEDS]
    detail = "{} gains over {} ({:.1f}%) for seeds {}: {}".format(
        trainer, STARTS_FROM[trainer], start, SEEDS, ", ".join("{:+.1f}".format(g) for g in gains))
    assert min(gains) >= SEED_GAIN_FLOOR.get(trainer, MIN_SEED_GAIN), detail
    assert sum(gains) / len(gains) >= MIN_MEAN_GAIN[trainer], detail


def test_fair_with_shuffled_pseudo_labels_does_not_improve(accuracy):
    start = accuracy("CuPL")
    shuffled = accuracy("FAIRShuffledPseudoLabels", config_of="FAIR")
    fair = sum(accuracy("FAIR", seed) for seed in SEEDS) / len(SEEDS)
    detail = "shuffled-label FAIR {:.1f}%, zero-shot start {:.1f}%, FAIR mean {:.1f}%".format(shuffled, start, fair)
    assert shuffled <= start + SHUFFLED_TOLERANCE, detail
    assert shuffled <= fair - SHUFFLED_BELOW_FAIR, detail
