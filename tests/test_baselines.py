"""Baselines WCA, UPL, MUST, DPA: each core rule on hand-made tensors, then the trainers' invariants on a
miniature DTD tree with a tiny CLIP (only the intended tensors train, no train label reaches a loss,
checkpoints restore what the method needs)."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.conftest import build_seeded, trainer_cfg, unit_vectors
from fairclip.trainers._alignment import description_weights
from fairclip.trainers.dpa import (
    agreement_weights, alignment_loss, class_mean_prototypes, distribution_alignment, dpa_pseudo_labels,
    history_mean, push_history_,
)
from fairclip.trainers.must import (
    confident_pseudo_labels, ema_decay, ema_update_, masked_cross_entropy, param_groups, visual_layer_id,
)
from fairclip.trainers.upl import PromptLearner, encode_prompt_embeddings, ensemble_loss, select_top_k_per_class
from fairclip.trainers.wca import SeededLocalCrops, softmax_description_weights, wca_scores


def _cfg(size=32):
    from fairclip.toolbox import get_cfg_default
    from fairclip.config import extend_cfg

    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.INPUT.SIZE = (size, size)
    return cfg


# ---------------------------------------------------------------------------- WCA
def test_wca_crop_weighting_follows_agreement_with_the_whole_image():
    g = torch.tensor([[1.0, 0.0, 0.0]])
    crops = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])  # crop 0 = the whole image, crop 1 orthogonal
    protos = torch.eye(3)
    scores = wca_scores(g, crops, protos, crop_tau=math.exp(4))
    a0 = 1.0 / (1.0 + math.exp(-math.exp(4)))  # softmax over relevances (1, 0) at tau e^4
    composite = F.normalize(torch.tensor([a0, 1.0 - a0, 0.0]), dim=0)
    assert torch.allclose(scores[0], composite, atol=1e-6)
    assert scores.argmax(1).item() == 0
    # tau = 0: plain mean of the crops, both classes tie
    flat = wca_scores(g, crops, protos, crop_tau=0.0)
    assert flat[0, 0] == pytest.approx(flat[0, 1]) and flat[0, 0] == pytest.approx(1 / math.sqrt(2))
    # the optional global term adds <g, W>
    both = wca_scores(g, crops, protos, crop_tau=0.0, global_weight=0.5)
    assert torch.allclose(both, flat + 0.5 * (g @ protos.t()))


def test_wca_description_weights_softmax_over_real_descriptions():
    emb = unit_vectors(2, 3, 8)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    t = unit_vectors(2, 8, seed=1)
    uniform = softmax_description_weights(emb, mask, t, tau=0.0)
    assert torch.allclose(uniform, torch.tensor([[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]]))
    w = softmax_description_weights(emb, mask, t, tau=math.exp(2))
    assert torch.allclose(w, description_weights(emb, mask, t, "softmax"), atol=1e-6)  # WCA's e^2
    sim = torch.einsum("kmd,kd->km", emb, t)
    assert w[1].argmax() == sim[1].argmax() and w[0, 2] == 0


def test_wca_crops_are_seeded_by_seed_and_image():
    cfg = _cfg()
    img = Image.effect_noise((90, 60), 40).convert("RGB")
    other = Image.effect_noise((90, 60), 80).convert("RGB")
    crops = SeededLocalCrops(cfg, n=6, min_frac=0.5, max_frac=0.9, seed=1)
    assert crops.boxes(img) == crops.boxes(img.copy())  # any worker, any order
    assert crops.boxes(img) != SeededLocalCrops(cfg, 6, 0.5, 0.9, seed=2).boxes(img)
    assert crops.boxes(img) != crops.boxes(other)
    for x, y, side in crops.boxes(img):
        assert 0.5 * 60 - 1 <= side <= 0.9 * 60 + 1 and x + side <= 90 and y + side <= 60
    assert crops(img).shape == (6, 3, 32, 32)
    assert torch.equal(crops(img), crops(img))


# ---------------------------------------------------------------------------- UPL
def test_upl_top_k_per_predicted_class():
    probs = torch.tensor([
        [0.6, 0.3, 0.1],  # 0: class 0, conf 0.6
        [0.9, 0.05, 0.05],  # 1: class 0, conf 0.9
        [0.2, 0.7, 0.1],  # 2: class 1, conf 0.7
        [0.8, 0.1, 0.1],  # 3: class 0, conf 0.8
        [0.6, 0.2, 0.2],  # 4: class 0, conf 0.6 (ties with row 0: row order kept)
    ])
    rows, labels = select_top_k_per_class(probs, 2)
    assert rows.tolist() == [1, 3, 2] and labels.tolist() == [0, 0, 1]  # class 2 is never predicted
    rows, labels = select_top_k_per_class(probs, 3)
    assert rows.tolist() == [1, 3, 0, 2] and labels.tolist() == [0, 0, 0, 1]
    rows, labels = select_top_k_per_class(probs, -1)
    assert rows.tolist() == [1, 3, 0, 4, 2]


def test_upl_ensemble_loss_sums_the_members():
    logits = torch.randn(3, 5, 4)
    y = torch.tensor([0, 1, 2, 3, 0])
    assert ensemble_loss(logits, y).item() == pytest.approx(sum(F.cross_entropy(m, y).item() for m in logits))


def test_upl_prompt_learner_reproduces_the_text_tower(tiny_clip):
    """Context initialised from "a photo of a": member 0 is exactly CLIP's encoding of the written prompt."""
    from fairclip.clip_backbone import load_clip
    from fairclip.clip_backbone.loading import clip

    model, _ = load_clip(path=tiny_clip)
    names = ["banded", "blotchy_thing"]
    learner = PromptLearner(model, names, n_ctx=16, ctx_init="a photo of a", n_prompts=2)
    assert learner.n_ctx == 4 and tuple(learner.ctx.shape) == (2, 4, model.ln_final.weight.shape[0])
    prompts = learner.prompt_embeddings()
    assert prompts.shape[:2] == (4, model.context_length)
    with torch.no_grad():
        ours = encode_prompt_embeddings(model, prompts, learner.eot_index.repeat(2))
        ref = model.encode_text(clip.tokenize(["a photo of a banded.", "a photo of a blotchy thing."]))
    assert torch.allclose(ours[:2], ref, atol=1e-5)
    assert not torch.allclose(ours[2:], ref, atol=1e-3)  # member 1 starts from random context
    assert set(learner.state_dict()) == {"ctx"}  # checkpoints hold only the context


# ---------------------------------------------------------------------------- MUST
def test_must_ema_decay_ramp_and_update():
    assert ema_decay(0, 0.99, 0.9998, 100) == pytest.approx(0.99)
    assert ema_decay(50, 0.99, 0.9998, 100) == pytest.approx(0.9949)
    assert ema_decay(100, 0.99, 0.9998, 100) == pytest.approx(0.9998)
    assert ema_decay(10 ** 6, 0.99, 0.9998, 100) == pytest.approx(0.9998)
    assert ema_decay(0, 0.99, 0.9998, 0) == pytest.approx(0.9998)
    teacher = [torch.tensor([1.0, 2.0]), torch.tensor([[0.0]])]
    student = [torch.tensor([3.0, 6.0], requires_grad=True), torch.tensor([[4.0]])]
    ema_update_(teacher, student, 0.75)
    assert teacher[0].tolist() == [1.5, 3.0] and teacher[1].item() == 1.0
    assert student[0].tolist() == [3.0, 6.0]  # the student is untouched


def test_must_confidence_threshold_and_masked_loss():
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.4, 0.35, 0.25], [0.1, 0.2, 0.7]])
    pseudo, mask = confident_pseudo_labels(probs, 0.5)
    assert pseudo.tolist() == [0, 0, 2] and mask.tolist() == [True, False, True]
    logits = torch.randn(3, 3)
    expected = F.cross_entropy(logits[mask], pseudo[mask])
    assert masked_cross_entropy(logits, pseudo, mask).item() == pytest.approx(expected.item(), rel=1e-6)
    none = masked_cross_entropy(logits, pseudo, torch.zeros(3, dtype=torch.bool))
    assert none.item() == 0.0  # no confident sample: no self-training signal, and no NaN


def test_must_layer_decay_and_no_decay_groups():
    assert visual_layer_id("clip.visual.ln_pre.weight", 12) == 0
    assert visual_layer_id("clip.visual.transformer.resblocks.0.ln_1.bias", 12) == 1
    assert visual_layer_id("clip.visual.transformer.resblocks.11.ln_2.weight", 12) == 12
    assert visual_layer_id("clip.visual.ln_post.weight", 12) == 13
    assert visual_layer_id("classifier", 12) == 13
    named = [("clip.visual.ln_pre.weight", torch.nn.Parameter(torch.ones(4))),
             ("clip.visual.transformer.resblocks.0.ln_1.bias", torch.nn.Parameter(torch.zeros(4))),
             ("classifier", torch.nn.Parameter(torch.ones(3, 4))),
             ("clip.visual.proj", torch.nn.Parameter(torch.ones(4, 4), requires_grad=False))]
    groups = param_groups(named, lr=1.0, weight_decay=0.05, no_decay=lambda n, p: p.dim() == 1,
                          layer_decay=0.5, num_layers=1)
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert by_param[id(named[0][1])]["lr"] == pytest.approx(0.25) and by_param[id(named[0][1])]["weight_decay"] == 0
    assert by_param[id(named[1][1])]["lr"] == pytest.approx(0.5)
    assert by_param[id(named[2][1])]["lr"] == pytest.approx(1.0) and by_param[id(named[2][1])]["weight_decay"] == 0.05
    assert id(named[3][1]) not in by_param  # frozen tensors are not optimised


# ---------------------------------------------------------------------------- DPA
def test_dpa_distribution_alignment_and_history_ring():
    aligned = distribution_alignment(torch.tensor([[0.5, 0.5]]), torch.tensor([0.8, 0.2]))
    assert torch.allclose(aligned, torch.tensor([[0.2, 0.8]]))  # the under-predicted class is lifted
    history, count = torch.zeros(2, 2), torch.zeros((), dtype=torch.long)
    assert torch.equal(history_mean(history, count), torch.zeros(2))
    for row in ([1.0, 0.0], [0.0, 1.0], [0.5, 0.5]):
        push_history_(history, count, torch.tensor(row))
    assert count.item() == 3
    assert torch.allclose(history_mean(history, count), torch.tensor([0.25, 0.75]))  # the last 2 batches
    history, count = torch.zeros(4, 2), torch.zeros((), dtype=torch.long)
    push_history_(history, count, torch.tensor([0.9, 0.1]))
    assert torch.allclose(history_mean(history, count), torch.tensor([0.9, 0.1]))  # only filled rows count


def test_dpa_pseudo_label_mix_and_agreement_weights():
    p_text = torch.tensor([[0.6, 0.4], [0.3, 0.7]])
    p_image = torch.tensor([[0.2, 0.8], [0.1, 0.9]])
    mean = torch.tensor([0.5, 0.5])
    assert dpa_pseudo_labels(p_text, p_image, mean, 1.0)[0].tolist() == [1, 1]
    assert dpa_pseudo_labels(p_text, p_image, mean, 0.0)[0].tolist() == [0, 1]
    pseudo, mixed = dpa_pseudo_labels(p_text, p_image, torch.tensor([0.9, 0.1]), 0.5)
    assert torch.allclose(mixed.sum(1), torch.ones(2))
    w = agreement_weights([p_text, p_image], torch.tensor([1, 1]))
    assert w[0].item() == pytest.approx((0.4 / 0.6) * 1.0, rel=1e-5)  # the text head prefers class 0
    assert w[1].item() == pytest.approx(1.0, rel=1e-5)  # both heads agree


def test_dpa_image_prototype_update_and_alignment():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 2])
    sums = torch.zeros(3, 2).index_add_(0, labels, feats)
    counts = torch.zeros(3).index_add_(0, labels, torch.ones(3))
    fallback = torch.tensor([[0.0, 1.0], [3.0, 4.0], [1.0, 0.0]])
    protos = class_mean_prototypes(sums, counts, fallback)
    s = 1 / math.sqrt(2)
    assert torch.allclose(protos, torch.tensor([[s, s], [0.6, 0.8], [s, s]]))  # class 1: text fallback
    z = torch.eye(2)
    p = torch.eye(2)
    assert alignment_loss(p, z, 100.0).item() < 1e-6
    assert alignment_loss(p.flip(0), z, 100.0).item() > 50  # swapped prototypes are heavily penalised


# ---------------------------------------------------------------------------- trainers on a miniature tree
def _trainer(trainer, root, clip_path, out, *opts):
    return build_seeded(trainer_cfg(
        trainer, "dtd", root, out, "MODEL.BACKBONE.PATH", clip_path, "DATALOADER.NUM_WORKERS", "0",
        "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "OPTIM.MAX_EPOCH", "1", "VERBOSE", "False", *opts))


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["MUST", "DPA"])
def test_self_training_trains_only_ln_and_classifier_and_ignores_train_labels(name, mini_dtd, tiny_clip, tmp_path):
    trainer = _trainer(name, mini_dtd, tiny_clip, str(tmp_path / "run"))
    model = trainer.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "classifier" in trainable
    assert all(n == "classifier" or n.startswith("clip.visual.") and "ln_" in n for n in trainable)
    assert set(model.state_dict()) - trainable == {k for k in model.state_dict()
                                                   if k.startswith(model.extra_state_keys)}
    if name == "DPA":
        trainer.initial_image_prototypes()
    batch = next(iter(trainer.train_loader_x))
    start = copy.deepcopy((model.state_dict(), trainer.optim.state_dict(), trainer.sched.state_dict()))
    results = []
    for labels in (batch["label"], torch.randint(0, 3, batch["label"].shape), torch.full_like(batch["label"], -7)):
        model.load_state_dict(start[0])
        trainer.optim.load_state_dict(start[1])
        trainer.sched.load_state_dict(start[2])
        trainer.before_epoch()
        trainer.epoch, trainer.batch_idx, trainer.num_batches = 0, 0, len(trainer.train_loader_x)
        out = trainer.forward_backward(dict(batch, label=labels))
        results.append((out["loss"].item(), _snapshot(model), copy.deepcopy(model.state_dict())))
    before = start[0]
    changed = {n for n in trainable if not torch.equal(before[n], results[0][1][n])}
    assert "classifier" in changed and changed <= trainable
    for loss, params, state in results[1:]:
        assert loss == results[0][0]
        assert all(torch.equal(state[k], results[0][2][k]) for k in state)  # incl. teacher / DA history


def test_must_teacher_follows_the_student_and_is_checkpointed(mini_dtd, tiny_clip, tmp_path):
    out = str(tmp_path / "run")
    trainer = _trainer("MUST", mini_dtd, tiny_clip, out, "TRAINER.MUST.TEST_TEACHER", "True",
                       "TRAINER.MUST.EMA_DECAY_INIT", "0.5", "TRAINER.MUST.EMA_WARMUP_ITERS", "1000")
    images = next(iter(trainer.train_loader_x))["img"].to(trainer.device)
    with torch.no_grad():
        assert torch.allclose(trainer.model.teacher_logits(images), trainer.model(images))  # teacher = student
    trainer.before_epoch()
    trainer.epoch, trainer.batch_idx, trainer.num_batches = 0, 0, 1
    trainer.forward_backward(next(iter(trainer.train_loader_x)))
    teacher, student = trainer.model.teacher.tensors(), dict(trainer.model.named_parameters())
    moved = [n for n in teacher if not torch.equal(teacher[n], student[n])]
    assert "classifier" in moved  # the teacher lags the student (decay 0.5 at step 0)
    trainer.save_model(0, out)

    again = _trainer("MUST", mini_dtd, tiny_clip, str(tmp_path / "eval"), "TRAINER.MUST.TEST_TEACHER", "True")
    again.load_model(out)
    restored = again.model.teacher.tensors()
    assert all(torch.equal(restored[n], teacher[n]) for n in teacher)
    with torch.no_grad():
        assert torch.allclose(again.model_inference(images), trainer.model_inference(images), atol=1e-5)


def test_upl_pseudo_labels_are_zero_shot_predictions_not_train_labels(mini_dtd, tiny_clip, tmp_path):
    from fairclip.toolbox import Datum

    trainer = _trainer("UPL", mini_dtd, tiny_clip, str(tmp_path / "run"), "TRAINER.UPL.TOPK", "2")
    probs, items = trainer.zero_shot_train_probs()
    selected = trainer.build_pseudo_labelled_set()
    pred = {item.impath: int(p.argmax()) for item, p in zip(items, probs)}
    assert selected and all(d.label == pred[d.impath] for d in selected)
    assert all(sum(d.label == c for d in selected) <= 2 for c in range(3))
    # the same images with other (nonsense) labels give the same selection
    dataset = trainer.dm.dataset
    dataset._train_x = [Datum(impath=d.impath, label=(d.label + 1) % 3, classname=d.classname) for d in dataset.train_x]
    relabelled = trainer.build_pseudo_labelled_set()
    assert [(d.impath, d.label) for d in relabelled] == [(d.impath, d.label) for d in selected]


def test_upl_prompt_checkpoint_round_trip(mini_dtd, tiny_clip, tmp_path):
    out = str(tmp_path / "run")
    trainer = _trainer("UPL", mini_dtd, tiny_clip, out, "TRAINER.UPL.ENSEMBLE", "2")
    with torch.no_grad():
        trainer.prompt_learner.ctx.add_(0.1)
    trainer.save_model(0, out)
    again = _trainer("UPL", mini_dtd, tiny_clip, str(tmp_path / "eval"), "TRAINER.UPL.ENSEMBLE", "2")
    again.load_model(out)
    with torch.no_grad():
        assert torch.allclose(again.class_embeddings(), trainer.class_embeddings(), atol=1e-6)


@pytest.mark.parametrize("trainer,key,value,message", [
    ("WCA", "TRAINER.WCA.MIN_FRAC", "0.95", "TRAINER.WCA.MIN_FRAC=0.95 and MAX_FRAC=0.9 must satisfy"),
    ("UPL", "TRAINER.UPL.PSEUDO_TEMPLATES", "many", "TRAINER.UPL.PSEUDO_TEMPLATES='many' is not one of upl, dataset"),
    ("MUST", "TRAINER.MUST.BALANCE", "global", "TRAINER.MUST.BALANCE='global' is not one of"),
    ("DPA", "TRAINER.DPA.ALPHA", "1.5", "TRAINER.DPA.ALPHA=1.5 must be in [0, 1]"),
])
def test_bad_baseline_key_values_fail_clearly(trainer, key, value, message, mini_dtd, tiny_clip, tmp_path):
    from fairclip.toolbox.errors import UserError

    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        _trainer(trainer, mini_dtd, tiny_clip, str(tmp_path / "run"), key, value)
