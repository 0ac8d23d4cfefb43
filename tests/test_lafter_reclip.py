"""LaFTer and ReCLIP: the parts of each method as pure functions, then each trainer on a miniature tree (what
trains, that train labels never reach a loss, eval-only from the checkpoint). Scripts end to end are in
tests/test_compare_e2e.py, resume after faults in tests/test_resume.py, the learning signal in
tests/test_learning_signal.py, the parity scripts in tests/test_parity_scripts.py."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import build_seeded, trainer_cfg, unit_vectors
from fairclip.trainers.lafter import (prompt_init_bound, prompted_image_features, text_classifier_loss,
                                      text_training_set, train_text_classifier)
from fairclip.trainers.reclip import (agreement_losses, class_subspace_projection, cluster_centroids,
                                      conjugate_gradient, knn_affinity, propagate_labels, reclip_epochs)


# ---------------------------------------------------------------------------- LaFTer
def test_lafter_text_set_is_descriptions_then_filled_templates():
    texts, labels = text_training_set(["sea_horse", "cat"], [["a", "b"], ["c"]], ["a photo of a {}.", "{} art"])
    assert texts == ["a", "b", "c", "a photo of a sea horse.", "sea horse art", "a photo of a cat.", "cat art"]
    assert labels == [0, 0, 1, 0, 0, 1, 1]
    assert text_training_set(["sea_horse", "cat"], [["a"], ["c"]], ["{}!"], "templates") == (
        ["sea horse!", "cat!"], [0, 1])
    assert text_training_set(["sea_horse", "cat"], [], [], "classnames") == (["sea horse", "cat"], [0, 1])


def test_lafter_loss_is_label_smoothed_ce_as_lafter_writes_it():
    g = torch.Generator().manual_seed(0)
    feats, noise = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    layer = torch.nn.Linear(4, 3, bias=False)
    logp = F.log_softmax(layer(feats + noise), dim=-1)
    eps = 0.1  # LaFTer's LabelSmoothingCrossEntropy: eps * mean(-sum log p) / K + (1 - eps) * NLL
    expected = eps * (-logp.sum(-1)).mean() / 3 + (1 - eps) * F.nll_loss(logp, labels)
    assert torch.allclose(text_classifier_loss(layer, feats, labels, noise, eps), expected, atol=1e-6)


def test_lafter_text_phase_learns_and_its_noise_is_seeded():
    feats, labels = unit_vectors(30, 8), torch.arange(30) % 3
    feats = F.normalize(feats + 2.0 * F.one_hot(labels, 8).float(), dim=-1)  # separable classes
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        layer = torch.nn.Linear(8, 3, bias=False)
        losses = train_text_classifier(layer, feats, labels, 40, 0.05, 0.01, 0.1, 0.1,
                                       torch.Generator().manual_seed(3))
        weights.append(layer.weight.detach().clone())
    assert losses[-1] < losses[0] and (layer(feats).argmax(1) == labels).all()
    assert torch.equal(weights[0], weights[1])  # same generator seed, same noise, same classifier


def test_lafter_prompts_enter_after_the_class_token(tiny_clip):
    from fairclip.clip_backbone import load_clip

    model, _ = load_clip(path=tiny_clip)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        plain = model.encode_image(images)
        assert torch.allclose(prompted_image_features(model.visual, images), plain, atol=1e-5)
        assert torch.allclose(prompted_image_features(model.visual, images, torch.zeros(1, 0, 64)), plain, atol=1e-5)
        width = model.visual.conv1.out_channels
        prompted = prompted_image_features(model.visual, images, torch.full((1, 3, width), 0.05))
    assert prompted.shape == plain.shape and not torch.allclose(prompted, plain, atol=1e-4)
    assert prompt_init_bound(768) == pytest.approx((6.0 / (3 * 256 + 768)) ** 0.5)


# ---------------------------------------------------------------------------- ReCLIP
def test_reclip_projection_keeps_the_class_span_without_its_first_direction():
    emb = unit_vectors(6, 16)
    p = class_subspace_projection(emb, 768)
    u = torch.linalg.svd(emb.t(), full_matrices=False)[0]
    assert torch.allclose(p, p.t(), atol=1e-6) and torch.allclose(p @ p, p, atol=1e-5)
    assert torch.linalg.matrix_rank(p).item() == 5  # K - 1 directions
    assert torch.allclose(p @ u[:, 0], torch.zeros(16), atol=1e-5)  # the shared direction is gone
    assert torch.allclose(p @ u[:, 3], u[:, 3], atol=1e-5)
    assert torch.linalg.matrix_rank(class_subspace_projection(emb, 3)).item() == 2  # CUT_DIM 3: directions 1, 2


def _dense_graph(points, k):
    """The reference definition, dense: (cos + 1) / 2 without the diagonal, top-k rows, symmetrised, normalised."""
    n = len(points)
    a = (points @ points.t() + 1) / 2 * (1 - torch.eye(n))
    val, idx = a.topk(k, dim=1)
    w = torch.zeros(n, n).scatter_(1, idx, val)
    w = (w + w.t()) / 2
    d = w.sum(1).rsqrt()
    return d[:, None] * w * d[None, :]


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_reclip_sparse_knn_graph_equals_the_dense_definition(chunk):
    points = unit_vectors(40, 8)
    graph = knn_affinity(points, 5, chunk_rows=chunk)
    assert graph.is_sparse and graph._nnz() <= 2 * 40 * 5
    assert torch.allclose(graph.to_dense(), _dense_graph(points, 5), atol=1e-6)
    assert torch.allclose(graph.to_dense().diagonal(), torch.zeros(40))


def test_reclip_conjugate_gradient_is_scipys_iteration():
    from scipy.sparse.linalg import cg

    dense = _dense_graph(unit_vectors(30, 6, seed=1), 4).double()
    a = torch.eye(30, dtype=torch.float64) - 0.99 * dense
    b = torch.zeros(30, 3, dtype=torch.float64)
    b[0, 0] = b[1, 1] = 1.0  # column 2 is zero: solved at once
    for iters in (3, 20):
        ours = conjugate_gradient(lambda v: a @ v, b, maxiter=iters, rtol=1e-6)
        for col in range(3):
            ref = cg(a.numpy(), b[:, col].numpy(), rtol=1e-6, maxiter=iters)[0]
            assert np.allclose(ours[:, col].numpy(), ref, atol=1e-10), (iters, col)
    exact = conjugate_gradient(lambda v: a @ v, b, maxiter=200, rtol=1e-12)
    assert torch.allclose(exact, torch.linalg.solve(a, b), atol=1e-8)


def test_reclip_propagation_labels_clusters_from_their_class_nodes():
    torch.manual_seed(0)
    nodes = torch.eye(3, 6)
    labels = torch.arange(60) % 3
    feats = F.normalize(nodes[labels] + 0.2 * torch.randn(60, 6), dim=-1)
    pred, scores = propagate_labels(feats, nodes, torch.eye(6), k=5, alpha=0.99, maxiter=30)
    assert scores.shape == (63, 3) and torch.equal(pred[:3], torch.arange(3))
    assert (pred[3:] == labels).float().mean() > 0.95


def test_reclip_centroids_and_agreement_losses():
    points = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    previous = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    cent = cluster_centroids(points, torch.tensor([0, 0, 1]), previous)
    assert torch.allclose(cent[0], F.normalize(torch.tensor([1.0, 1.0]), dim=0))
    assert torch.allclose(cent[1], F.normalize(torch.tensor([1.0, 1.0]), dim=0))
    assert torch.equal(cent[2], previous[2])  # no member: the previous centroid stays

    g = torch.Generator().manual_seed(0)
    t_logits, v_logits = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    t_pl, v_pl = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 0, 1])  # the first two agree
    t_loss, v_rel, agree = agreement_losses(t_logits, v_logits, t_pl, v_pl, "released")
    _, v_mean, _ = agreement_losses(t_logits, v_logits, t_pl, v_pl, "mean")
    ce_t = F.cross_entropy(t_logits[:2], t_pl[:2], reduction="none")
    ce_v = F.cross_entropy(v_logits[:2], v_pl[:2], reduction="none")
    assert torch.equal(agree, torch.tensor([1.0, 1.0, 0.0, 0.0]))
    assert torch.allclose(t_loss, ce_t.mean()) and torch.allclose(v_mean, ce_v.mean())
    assert torch.allclose(v_rel, ce_v.sum() / 4 / 2)  # the released code: mean over the batch / n_agree
    assert reclip_epochs(2820) == 2 and reclip_epochs(15880) == 5 and reclip_epochs(10 ** 7) == 100


# ---------------------------------------------------------------------------- the trainers
FAST = ["DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "6", "OPTIM.MAX_EPOCH", "1",
        "VERBOSE", "False"]
OPTS = {"LaFTer": ["TRAINER.LAFTER.TEXT_STEPS", "5", "TRAINER.LAFTER.N_PROMPTS", "3",
                   "TRAINER.LAFTER.EVAL_EACH_EPOCH", "False"],
        "ReCLIP": ["TRAINER.RECLIP.N_NEIGHBORS", "4", "TRAINER.RECLIP.V_LOSS", "mean",
                   "TRAINER.RECLIP.EVAL_EACH_EPOCH", "False"]}


def _trainer(name, root, clip_path, out, *opts):
    return build_seeded(trainer_cfg(name, "dtd", root, out, "MODEL.BACKBONE.PATH", clip_path, *FAST, *OPTS[name],
                                    *opts))


def _trainable(trainer):
    return {n for n, p in trainer.model.named_parameters() if p.requires_grad}


def test_lafter_trains_prompts_visual_norms_and_classifier_and_ignores_train_labels(mini_dtd, tiny_clip, tmp_path):
    trainer = _trainer("LaFTer", mini_dtd, tiny_clip, str(tmp_path / "a"))
    names = _trainable(trainer)
    assert {"prompts", "classifier.weight"} <= names and "teacher_weight" not in names
    assert all(n in ("prompts", "classifier.weight") or (n.startswith("clip.visual.") and ".ln" in n) for n in names)
    assert not any(n.startswith("clip.transformer") for n in names)
    trainer.train_text_phase()
    assert torch.equal(trainer.model.teacher_weight, trainer.model.classifier.weight)
    batch = next(iter(trainer.train_loader_x))
    trainer.model_backward_and_update = lambda loss: loss.backward()  # gradients only, no step
    trainer.epoch = trainer.batch_idx = 0
    trainer.num_batches = 1
    grads = []
    for labels in (batch["label"], (batch["label"] + 1) % 3):  # other train labels: the same step
        trainer.model.zero_grad()
        trainer.before_epoch()
        trainer.forward_backward(dict(batch, label=labels))
        grads.append(trainer.model.prompts.grad.clone())
    assert grads[0].abs().sum() > 0 and torch.equal(grads[0], grads[1])


def test_lafter_eval_only_reproduces_the_trained_run(mini_dtd, tiny_clip, tmp_path):
    """--eval-only --model-dir: the prompts, the classifier and the visual norms come back from the checkpoint
    (the text phase is not rerun) and the test accuracy is the trained run's."""
    out = str(tmp_path / "run")
    trainer = _trainer("LaFTer", mini_dtd, tiny_clip, out)
    trainer.train()
    evaluator = _trainer("LaFTer", mini_dtd, tiny_clip, str(tmp_path / "eval"))
    evaluator.load_model(out)
    for name in ("prompts", "classifier.weight", "clip.visual.ln_post.weight"):
        assert torch.equal(evaluator.model.state_dict()[name], trainer.model.state_dict()[name]), name
    scores = [t.evaluate() for t in (evaluator, trainer)]
    assert scores[0]["results"]["accuracy"] == pytest.approx(scores[1]["results"]["accuracy"])


def test_reclip_trains_norms_of_both_towers_ignores_train_labels_and_eval_only_reproduces(mini_dtd, tiny_clip,
                                                                                          tmp_path):
    first = _trainer("ReCLIP", mini_dtd, tiny_clip, str(tmp_path / "first"))
    names = _trainable(first)
    assert any(n.startswith("clip.visual.") for n in names) and any(n.startswith("clip.transformer.") for n in names)
    assert "clip.ln_final.weight" in names and all(".ln" in n for n in names)
    first.before_epoch()
    relabelled = _trainer("ReCLIP", mini_dtd, tiny_clip, str(tmp_path / "relabelled"))
    for item in relabelled.train_items:  # train labels are read for diagnostics only
        item._label = (item.label + 1) % 3
    relabelled.before_epoch()
    assert torch.equal(relabelled.t_pseudo, first.t_pseudo) and torch.equal(relabelled.v_pseudo, first.v_pseudo)
    assert torch.equal(relabelled.model.v_classifier, first.model.v_classifier)

    # eval-only from the checkpoint: the centroids, the text nodes and both towers' norms come back
    out = str(tmp_path / "run")
    trainer = _trainer("ReCLIP", mini_dtd, tiny_clip, out)
    trainer.train()
    evaluator = _trainer("ReCLIP", mini_dtd, tiny_clip, str(tmp_path / "eval"))
    evaluator.load_model(out)
    for name in ("v_classifier", "t_nodes", "clip.ln_final.weight", "clip.visual.ln_post.weight"):
        assert torch.equal(evaluator.model.state_dict()[name], trainer.model.state_dict()[name]), name
    logits = [t.evaluate() for t in (evaluator, trainer)]
    assert logits[0]["results"]["accuracy"] == pytest.approx(logits[1]["results"]["accuracy"])
