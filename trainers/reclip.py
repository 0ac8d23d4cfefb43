"""ReCLIP (Hu et al., WACV 2024): label propagation in a class-subspace projection, and cross-modality
self-training of the image and the text branch.

Two branches share one CLIP:

* **ReCLIP-V** trains the image tower's LayerNorms (BatchNorm affine parameters on a ResNet) and classifies
  with cluster centroids: ``LOGIT_SCALE * <f_V(x), c_k>``;
* **ReCLIP-T** trains the text tower's LayerNorms (blocks and ``ln_final``) and classifies the *frozen*
  image features with the class embeddings of one short template: ``LOGIT_SCALE * <f_0(x), t_k>``.

Every epoch starts with a pass over the train split (the test view, no gradient) and one label propagation
per branch over the nodes ``[K class embeddings; N image features]``:

1. **projection** ``P = U_{1:CUT_DIM} U_{1:CUT_DIM}^T``, ``U`` the left singular vectors of the class
   embeddings ``[D, K]``: keeps the span of the class embeddings and drops its first singular direction,
   which all classes share (class-agnostic); nodes are projected and L2-normalised (``PROJECTION none``:
   the ablation without it);
2. **graph**: affinity ``(cos + 1) / 2``, no self-loops, each node's ``N_NEIGHBORS`` largest kept,
   symmetrised ``W = (A + A^T) / 2`` and normalised ``S = D^-1/2 W D^-1/2``; built chunk by chunk as a sparse
   matrix (``KNN_CHUNK`` rows of similarities at a time, never N x N);
3. **propagation**: ``(I - ALPHA S) F = Y`` (``Y``: one-hot on the K class nodes) by conjugate gradients,
   every class column at once (``CG_ITERS`` iterations, relative tolerance ``CG_TOL``, a converged column
   stops as in SciPy's ``cg``); pseudo-label = ``argmax_k F``.

ReCLIP-T's nodes and projection come from the full-template class embeddings of its current text tower
(recomputed after every epoch); ReCLIP-V's from the initial (zero-shot) class embeddings. ReCLIP-V's
classifier becomes the cluster centroids: the normalised mean of the nodes (class nodes included) that
propagation assigns to each class (a class no node falls into keeps its previous centroid).

Training (SGD, momentum, the test view, no augmentation): only samples whose two pseudo-labels agree
count; ReCLIP-T's loss is their mean CE, ReCLIP-V's is ``V_LOSS``: ``released`` (the released code's
``mean_i(CE_i * agree_i) / n_agree``, i.e. also divided by the batch size) or ``mean`` (the mean CE over the
agreeing samples). A batch without agreement is skipped. Learning rates: ``OPTIM.LR`` for the image
branch, ``LR_TEXT`` for the text branch. Inference (``INFERENCE``): ``ensemble`` (ReCLIP: the mean of both
branches' logits), ``visual`` or ``text``.

Protocol differences from the released code (which adapts on the test set and reports its best epoch):
adaptation uses the unlabelled train split, the test split is scored once at the end, the last epoch is
reported. Epochs follow the released rule ``min(100, N / 5000 + 2)`` for the train split's size N (set per
dataset in the configs; a run whose ``OPTIM.MAX_EPOCH`` differs from the rule says so). DDP is refused:
propagation needs every image's features, and the loss is normalised by the batch's agreement count.
Train-split labels are read only for the diagnostic pseudo-label accuracies.
"""
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call
from yacs.config import CfgNode as CN

from fairclip.clip_backbone.loading import clip
from fairclip.clip_backbone.text import fill_template
from fairclip.datasets.common import SkipUnreadableWrapper
from fairclip.datasets.decoded_cache import canvas_loader
from fairclip.toolbox import TRAINER_REGISTRY, build_data_loader, build_transform
from fairclip.toolbox.errors import UserError

from ._clip_base import ClipTrainer, TrainableState, unfreeze_visual_norms
from ._gpu_views import DeviceViewLoader, center_view


def add_config(cfg):
    c = cfg.TRAINER.RECLIP = CN()
    c.PREC = "fp32"  # fp32 or bf16 (autocast over fp32 master weights)
    c.N_NEIGHBORS = 20  # k of the kNN graph
    c.ALPHA = 0.99  # propagation: (I - ALPHA S) F = Y
    c.PROJECTION = "class_subspace"  # class_subspace (ReCLIP) | none (the ablation: propagate on raw features)
    c.CUT_DIM = 768  # singular directions 1 .. CUT_DIM-1 kept (ReCLIP: 768; 250 above 500 classes)
    c.CG_ITERS = 20
    c.CG_TOL = 1e-6
    c.KNN_CHUNK = 1024  # rows of the similarity matrix held at once while building the graph (memory knob)
    c.LOGIT_SCALE = 100.0
    c.LR_TEXT = 0.001  # ReCLIP-T's lr (OPTIM.LR is ReCLIP-V's)
    c.SHORT_TEMPLATE = ""  # ReCLIP-T's training/inference template; "" = the first of DATASET.TEMPLATES
    c.V_LOSS = "released"  # released (mean(CE * agree) / n_agree) | mean (mean CE over agreeing samples)
    c.INFERENCE = "ensemble"  # ensemble (mean of both branches' logits) | visual | text
    # Diagnostics: evaluate the test split after every epoch for the history (never used to select)
    c.EVAL_EACH_EPOCH = True


# ---------------------------------------------------------------------------- the rules (pure functions)
def reclip_epochs(n_images, max_epoch=100):
    """The released code's epoch rule: ``min(max_epoch, int(n / 5000 + 2))``."""
    return min(int(max_epoch), int(n_images / 5000 + 2))


def class_subspace_projection(class_emb, cut_dim):
    """``U[:, 1:cut_dim] U[:, 1:cut_dim]^T`` ``[D, D]`` from the reduced SVD of ``class_emb^T`` ``[D, K]``:
    the span of the class embeddings without its first (class-agnostic) singular direction."""
    u = torch.linalg.svd(class_emb.t().float(), full_matrices=False)[0]
    kept = u[:, 1:cut_dim]
    return kept @ kept.t()


def knn_affinity(points, k, chunk_rows=1024):
    """The normalised, symmetric kNN graph ``S = D^-1/2 W D^-1/2`` of L2-normalised ``points`` [n, d], as a
    sparse COO tensor. Affinity ``(cos + 1) / 2`` without self-loops, each row's ``k`` largest kept,
    ``W = (A_k + A_k^T) / 2``. Memory: ``chunk_rows x n`` similarities at a time plus ``2 n k`` entries."""
    n = points.shape[0]
    k = min(int(k), n - 1)
    device = points.device
    rows, cols, vals = [], [], []
    for start in range(0, n, chunk_rows):
        stop = min(n, start + chunk_rows)
        sims = points[start:stop] @ points.t()
        local = torch.arange(stop - start, device=device)
        sims[local, local + start] = -2.0  # no self-loops (below any cosine)
        top, idx = sims.topk(k, dim=1)  # (cos + 1) / 2 keeps the order: only the k kept values are mapped
        rows.append((local + start).repeat_interleave(k))
        cols.append(idx.reshape(-1))
        vals.append(((top + 1.0) / 2.0).reshape(-1))
    r, c, v = torch.cat(rows), torch.cat(cols), torch.cat(vals)
    index = torch.cat([torch.stack([r, c]), torch.stack([c, r])], dim=1)
    w = torch.sparse_coo_tensor(index, torch.cat([v, v]) / 2.0, (n, n), check_invariants=False).coalesce()
    index, values = w.indices(), w.values()
    degree = torch.zeros(n, dtype=values.dtype, device=device).index_add_(0, index[0], values)
    inv_sqrt = degree.clamp_min(torch.finfo(values.dtype).tiny).rsqrt()
    return torch.sparse_coo_tensor(index, values * inv_sqrt[index[0]] * inv_sqrt[index[1]], (n, n), check_invariants=False).coalesce()


def as_csr(graph):
    """The graph in compressed-row form (about twice as fast a product as COO, on CPU and CUDA)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return graph.to_sparse_csr()


def conjugate_gradient(matvec, b, maxiter=20, rtol=1e-6):
    """Solve ``A X = B`` column by column (A symmetric positive definite, given by ``matvec`` on ``[n, C]``)
    with SciPy's ``cg`` iteration from ``X = 0``: a column stops once ``|r| < rtol * |b|`` (a zero column
    at once). All columns run in one batch for ``maxiter`` iterations without host syncs."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = torch.zeros_like(b)
    b_norm = b.norm(dim=0)
    atol = rtol * b_norm
    active = b_norm > 0
    rho_prev = torch.ones(b.shape[1], dtype=b.dtype, device=b.device)
    zero = torch.zeros((), dtype=b.dtype, device=b.device)
    for it in range(maxiter):
        active = active & (r.norm(dim=0) >= atol)
        rho = (r * r).sum(0)
        beta = torch.where(active, rho / torch.where(active, rho_prev, 1.0), zero) if it else zero
        p = torch.where(active, r + beta * p, zero)
        q = matvec(p)
        pq = (p * q).sum(0)
        step = active & (pq != 0)
        alpha = torch.where(step, rho / torch.where(step, pq, 1.0), zero)
        x = x + alpha * p
        r = r - alpha * q
        rho_prev = rho
    return x


def propagate_labels(feats, class_nodes, projection, k=20, alpha=0.99, maxiter=20, rtol=1e-6, chunk_rows=1024,
                     cg_dtype=None):
    """ReCLIP's label propagation. ``feats`` [N, D] and ``class_nodes`` [K, D] (L2-normalised); returns
    ``(pred [K + N], scores [K + N, K])`` over the nodes ``[class_nodes; feats]`` (drop the first K rows for
    the images' pseudo-labels). ``cg_dtype``: precision of the solve (default: that of the features)."""
    num_classes = class_nodes.shape[0]
    points = torch.cat([class_nodes, feats], dim=0).to(projection.dtype)
    projected = F.normalize(points @ projection, dim=-1)
    graph = knn_affinity(projected, k, chunk_rows)
    dtype = cg_dtype or projected.dtype
    graph = as_csr(graph.to(dtype))
    n = points.shape[0]
    y = torch.zeros(n, num_classes, dtype=dtype, device=points.device)
    y[torch.arange(num_classes), torch.arange(num_classes)] = 1.0
    scores = conjugate_gradient(lambda v: v - alpha * (graph @ v), y, maxiter, rtol)
    return scores.argmax(dim=1), scores


def cluster_centroids(points, pred, previous):
    """Per class, the normalised mean of ``points`` [n, D] whose prediction is that class; a class with no
    point keeps its row of ``previous`` [K, D]."""
    num_classes = previous.shape[0]
    sums = torch.zeros(num_classes, points.shape[1], dtype=torch.float32, device=points.device)
    sums.index_add_(0, pred, points.float())
    counts = torch.bincount(pred, minlength=num_classes).to(sums.dtype)
    means = F.normalize(sums / counts.clamp_min(1.0)[:, None], dim=-1)
    return torch.where(counts[:, None] > 0, means, previous.float())


def agreement_losses(t_logits, v_logits, t_pseudo, v_pseudo, v_loss="released"):
    """``(t_loss, v_loss, agree)``: the two branches' CE over the samples whose pseudo-labels agree."""
    agree = (t_pseudo == v_pseudo).to(t_logits.dtype)
    n_agree = agree.sum().clamp_min(1.0)
    t_loss = (F.cross_entropy(t_logits, t_pseudo, reduction="none") * agree).sum() / n_agree
    v_ce = F.cross_entropy(v_logits, v_pseudo, reduction="none") * agree
    v = v_ce.mean() / n_agree if v_loss == "released" else v_ce.sum() / n_agree
    return t_loss, v, agree


def text_layernorms(clip_model):
    """The text tower's LayerNorms (every block's ln_1, ln_2, and ln_final)."""
    return [m for m in clip_model.transformer.modules() if isinstance(m, nn.LayerNorm)] + [clip_model.ln_final]


# ---------------------------------------------------------------------------- model
class FrozenNorms(nn.Module):
    """The image tower's normalisation parameters as loaded (non-persistent buffers: rebuilt from the
    backbone), for the frozen image features of ReCLIP-T."""

    def __init__(self, visual):
        super().__init__()
        for name, p in visual.named_parameters():
            if p.requires_grad:
                self.register_buffer(name.replace(".", "__"), p.detach().clone(), persistent=False)

    def tensors(self):
        return {name.replace("__", "."): b for name, b in self.named_buffers()}


class ReclipModel(TrainableState):
    """One CLIP with the visual norms (ReCLIP-V) and the text LayerNorms (ReCLIP-T) trainable; buffers:
    ReCLIP-V's classifier (centroids), ReCLIP-T's propagation nodes and ReCLIP-V's (fixed) nodes."""

    extra_state_keys = ("v_classifier", "t_nodes", "v_nodes")

    def __init__(self, clip_model, class_emb, short_tokens, full_tokens, n_templates, logit_scale):
        super().__init__()
        self.clip = clip_model
        self.visual_params = unfreeze_visual_norms(clip_model)
        self.frozen = FrozenNorms(clip_model.visual)
        self.text_params = [p for m in text_layernorms(clip_model) for p in m.parameters()]
        for p in self.text_params:
            p.requires_grad_(True)
        emb = F.normalize(class_emb.detach().float(), dim=-1)
        self.register_buffer("v_classifier", emb.clone())
        self.register_buffer("t_nodes", emb.clone())
        self.register_buffer("v_nodes", emb.clone())
        self.register_buffer("short_tokens", short_tokens, persistent=False)
        self.register_buffer("full_tokens", full_tokens, persistent=False)
        self.n_templates = n_templates
        self.logit_scale = logit_scale

    def visual_features(self, images):
        return F.normalize(self.clip.encode_image(images).float(), dim=-1)

    def frozen_features(self, images):
        return F.normalize(functional_call(self.clip.visual, self.frozen.tensors(), (images,)).float(), dim=-1)

    def class_embeddings(self, full=False):
        """``[K, D]``: per class, the normalised mean of its normalised prompt embeddings (current text tower)."""
        tokens = self.full_tokens if full else self.short_tokens
        n = self.n_templates if full else 1
        feats = F.normalize(self.clip.encode_text(tokens).float(), dim=-1)
        return F.normalize(feats.view(-1, n, feats.shape[-1]).mean(dim=1), dim=-1)

    def v_logits(self, images):
        return self.logit_scale * self.visual_features(images) @ F.normalize(self.v_classifier, dim=-1).t()

    def t_logits(self, frozen_feats, text):
        return self.logit_scale * frozen_feats @ text.t()


# ---------------------------------------------------------------------------- trainer
@TRAINER_REGISTRY.register()
class ReCLIP(ClipTrainer):
    CFG_NODE = "RECLIP"
    SUPPORTS_DDP = False  # propagation over every image, losses normalised by the batch's agreement count

    def check_cfg(self, cfg):
        c = cfg.TRAINER.RECLIP
        self.check_choices(cfg, {"PREC": ("fp32", "bf16"), "V_LOSS": ("released", "mean"),
                                 "PROJECTION": ("class_subspace", "none"),
                                 "INFERENCE": ("ensemble", "visual", "text")})
        if not 0.0 < c.ALPHA < 1.0:
            raise UserError("TRAINER.RECLIP.ALPHA={} must be in (0, 1)".format(c.ALPHA))
        for key in ("N_NEIGHBORS", "CUT_DIM", "CG_ITERS", "KNN_CHUNK"):
            if c[key] < (2 if key == "CUT_DIM" else 1):
                raise UserError("TRAINER.RECLIP.{}={} is too small (N_NEIGHBORS, CG_ITERS, KNN_CHUNK >= 1, "
                                "CUT_DIM >= 2)".format(key, c[key]))

    def custom_train_transform(self):
        return build_transform(self.cfg, is_train=False)  # ReCLIP trains on CLIP's test view

    def gpu_train_views(self):
        return [center_view()]

    # ------------------------------------------------------------------ model
    def build_method(self):
        c = self.cfg.TRAINER.RECLIP
        templates = self.templates()
        self.short_template = c.SHORT_TEMPLATE or templates[0]
        try:
            short = clip.tokenize([fill_template(self.short_template, n) for n in self.classnames],
                                  context_length=self.clip_model.context_length, truncate=True)
            full = clip.tokenize([fill_template(t, n) for n in self.classnames for t in templates],
                                 context_length=self.clip_model.context_length, truncate=True)
        except (KeyError, IndexError, ValueError) as exc:
            raise UserError("TRAINER.RECLIP.SHORT_TEMPLATE={!r}: not a template with one {{}} ({})".format(
                c.SHORT_TEMPLATE, exc)) from None
        model = ReclipModel(self.clip_model, self.template_classifier(), short, full, len(templates), c.LOGIT_SCALE)
        self.model = model.to(self.device)
        o = self.cfg.OPTIM
        groups = [{"params": model.visual_params, "lr": o.LR}, {"params": model.text_params, "lr": c.LR_TEXT}]
        self.optim = torch.optim.SGD(groups, lr=o.LR, momentum=o.MOMENTUM, weight_decay=o.WEIGHT_DECAY)
        self.register_model("reclip", self.model, self.optim, None)  # constant lr
        self.train_items = list(self.dm.dataset.train_x)
        self.row_of = {}
        for i, item in enumerate(self.train_items):
            self.row_of.setdefault(item.impath, i)
        self._frozen_feats = None
        self._sweep_loader = None
        self._eval_text = None
        rule = reclip_epochs(len(self.train_items))
        if self.cfg.OPTIM.MAX_EPOCH != rule:
            print("Note: ReCLIP's released rule gives {} epoch(s) for {} train images; this run trains {} "
                  "(OPTIM.MAX_EPOCH)".format(rule, len(self.train_items), self.cfg.OPTIM.MAX_EPOCH))
        print("ReCLIP: {} visual and {} text norm parameters trained; short template {!r}, {} templates for "
              "the propagation nodes".format(sum(p.numel() for p in model.visual_params),
                                             sum(p.numel() for p in model.text_params), self.short_template,
                                             len(templates)))

    def text_sources(self):
        return {"templates": str(self.cfg.DATASET.TEMPLATES), "short_template": self.short_template,
                "inference": self.cfg.TRAINER.RECLIP.INFERENCE}

    # ------------------------------------------------------------------ the pass over the train split
    def sweep_loader(self):
        """The train split in order, test view, test batch size (GPU views when training uses them); built
        once."""
        if self._sweep_loader is not None:
            return self._sweep_loader
        cfg = self.cfg
        if isinstance(self.train_loader_x, DeviceViewLoader):
            loader = canvas_loader(self.train_loader_x.dataset, cfg.DATALOADER.TEST.BATCH_SIZE, False,
                                   cfg.DATALOADER.NUM_WORKERS, pin_memory=self.device.type == "cuda")
            self._sweep_loader = DeviceViewLoader(loader, self.train_loader_x.views, [center_view()])
        else:
            self._sweep_loader = build_data_loader(
                cfg, sampler_type="SequentialSampler", data_source=self.train_items,
                batch_size=cfg.DATALOADER.TEST.BATCH_SIZE, tfm=build_transform(cfg, is_train=False),
                is_train=False, dataset_wrapper=SkipUnreadableWrapper)
        return self._sweep_loader

    @torch.no_grad()
    def sweep(self):
        """``(visual feats [N, D], frozen feats [N, D], labels [N])`` in train-split row order (rows no image
        reached, e.g. replaced unreadable ones, take the features of the image read in their place)."""
        n, dim = len(self.train_items), self.model.v_classifier.shape[1]
        need_frozen = self._frozen_feats is None
        v_feats = torch.zeros(n, dim, device=self.device)
        f_feats = torch.zeros(n, dim, device=self.device) if need_frozen else self._frozen_feats
        seen = torch.zeros(n, dtype=torch.bool)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            for batch in self.sweep_loader():
                rows = torch.tensor([self.row_of[p] for p in batch["impath"]])
                images = batch["img"].to(self.device, non_blocking=True)
                with self.autocast():
                    v_feats[rows.to(self.device)] = self.model.visual_features(images)
                    if need_frozen:
                        f_feats[rows.to(self.device)] = self.model.frozen_features(images)
                seen[rows] = True
        if not bool(seen.all()):
            missing = (~seen).nonzero().squeeze(1)
            print("ReCLIP: {} train image(s) were replaced while reading; they share a neighbour's features".format(
                len(missing)))
        self._frozen_feats = f_feats
        labels = torch.tensor([item.label for item in self.train_items], device=self.device)  # diagnostics only
        return v_feats, f_feats, labels

    def propagate(self, feats, nodes):
        c = self.cfg.TRAINER.RECLIP
        if c.PROJECTION == "none":
            projection = torch.eye(nodes.shape[1], device=nodes.device)
        else:
            projection = class_subspace_projection(nodes, c.CUT_DIM)
        return propagate_labels(feats, nodes, projection, c.N_NEIGHBORS, c.ALPHA, c.CG_ITERS, c.CG_TOL, c.KNN_CHUNK)

    # ------------------------------------------------------------------ training
    def before_epoch(self):
        m = self.model
        self.set_model_mode("eval")
        v_feats, f_feats, labels = self.sweep()
        k = self.num_classes
        t_pred, _ = self.propagate(f_feats, m.t_nodes)
        v_pred, _ = self.propagate(v_feats, m.v_nodes)
        with torch.no_grad():
            m.v_classifier.copy_(cluster_centroids(torch.cat([m.v_nodes, v_feats]), v_pred, m.v_classifier))
        self.t_pseudo, self.v_pseudo = t_pred[k:], v_pred[k:]
        agree = self.t_pseudo == self.v_pseudo
        self.agree_host = agree.cpu()  # the skip rule is decided on the host, without a sync per step
        self.set_model_mode("train")
        n = max(len(labels), 1)
        self._epoch_stats = {
            "agree_frac": agree.float().mean().item(),
            "diag_pseudo_label_acc": 100.0 * ((self.t_pseudo == labels) & agree).sum().item() / max(agree.sum().item(), 1),
            "diag_text_pseudo_label_acc": 100.0 * (self.t_pseudo == labels).sum().item() / n,
            "diag_visual_pseudo_label_acc": 100.0 * (self.v_pseudo == labels).sum().item() / n,
            "lr": self.get_current_lr(),
            "skipped_batches": 0,
        }

    def forward_backward(self, batch):
        c, m = self.cfg.TRAINER.RECLIP, self.model
        rows = torch.tensor([self.row_of[p] for p in batch["impath"]])
        if not bool(self.agree_host[rows].any()):
            self._epoch_stats["skipped_batches"] += 1  # no agreed pseudo-label: ReCLIP skips the batch
            zero = torch.zeros((), device=self.device)
            return {"loss": zero, "loss_t": zero, "loss_v": zero}
        rows = rows.to(self.device, non_blocking=True)
        images = batch["img"].to(self.device, non_blocking=True)
        with self.autocast():
            v_logits = m.v_logits(images).float()
            t_logits = m.t_logits(self._frozen_feats[rows], m.class_embeddings()).float()
        t_loss, v_loss, _ = agreement_losses(t_logits, v_logits, self.t_pseudo[rows], self.v_pseudo[rows], c.V_LOSS)
        loss = t_loss + v_loss  # disjoint parameters: one backward gives each branch its own gradient
        self.model_backward_and_update(loss)
        return {"loss": loss.detach(), "loss_t": t_loss.detach(), "loss_v": v_loss.detach()}

    @torch.no_grad()
    def update_text_nodes(self):
        """ReCLIP-T's propagation nodes for the next epoch: its current all-template class embeddings."""
        with self.autocast():
            self.model.t_nodes.copy_(self.model.class_embeddings(full=True).float())

    def after_epoch(self):
        self.update_text_nodes()
        self.log_epoch(dict(self._epoch_stats))
        super().after_epoch()

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def evaluate(self, split=None):
        with self.autocast():
            self._eval_text = self.model.class_embeddings().float()  # fixed during an evaluation
        try:
            return super().evaluate(split)
        finally:
            self._eval_text = None

    def model_inference(self, images):
        mode, m = self.cfg.TRAINER.RECLIP.INFERENCE, self.model
        with self.autocast():
            if mode == "visual":
                return m.v_logits(images).float()
            t = m.t_logits(m.frozen_features(images), self._eval_text).float()
            if mode == "text":
                return t
            return 0.5 * (t + m.v_logits(images).float())
