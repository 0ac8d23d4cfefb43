"""UPL (Huang et al., 2022): unsupervised prompt learning from zero-shot pseudo-labels.

1. Before training, zero-shot CLIP (one hand-written template per dataset, as in UPL) labels every train
   image, seen through the test transform; for each predicted class the ``TOPK`` most confident images
   are kept, labelled with their prediction. The true train labels are read only for the diagnostic
   pseudo-label accuracy.
2. A CoOp prompt learner ("X X ... X <classname>.", ``N_CTX`` shared context vectors, class token at the
   end) is trained with cross-entropy on that subset; both encoders stay frozen. The context is learned,
   so here, unlike the other trainers, the text tower runs in the training loop.
3. ``ENSEMBLE`` > 1 trains several prompts (different random inits) in one run, on the same batches;
   their logits are averaged at test time (UPL averages 16 separately trained prompts).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from fairclip.clip_backbone.loading import clip
from fairclip.datasets.common import SkipUnreadableWrapper
from fairclip.datasets.templates import coop_template
from fairclip.toolbox import TRAINER_REGISTRY, Datum, build_data_loader, build_optimizer, build_transform
from fairclip.toolbox.errors import UserError

from ._clip_base import ClipTrainer, TrainableState
from ._schedules import epoch_scheduler


def add_config(cfg):
    c = cfg.TRAINER.UPL = CN()
    c.PREC = "fp32"  # fp32 or bf16 (autocast over fp32 weights; UPL's fp16 weights are not offered)
    c.N_CTX = 16  # learnable context tokens (ignored when CTX_INIT is set: its token count is used)
    c.CTX_INIT = ""  # "" = random N(0, 0.02) init (UPL); or a phrase such as "a photo of a"
    # Zero-shot prompts for the pseudo-labels: "upl" (UPL's one template per dataset) or "dataset"
    # (DATASET.TEMPLATES, e.g. the CLIP ensemble).
    c.PSEUDO_TEMPLATES = "upl"
    c.TOPK = 16  # most confident images kept per predicted class (UPL: DATASET.NUM_SHOTS=16); <= 0 keeps all
    c.ENSEMBLE = 1  # prompts trained together (member 0 from CTX_INIT if set, the others random)
    # Diagnostics: evaluate the test split after every epoch for the history (never used to select).
    # Off by default: UPL trains 50 epochs and only tests at the end.
    c.EVAL_EACH_EPOCH = False


# ---------------------------------------------------------------------------- the rules (pure functions)
def select_top_k_per_class(probs, k):
    """UPL's selection: for every predicted class, the ``k`` most confident rows of ``probs`` [N, K].

    Returns ``(rows [M], pseudo_labels [M])`` sorted by class, then by falling confidence (ties keep the
    row order). A class predicted fewer than ``k`` times keeps all its rows; ``k <= 0`` keeps every row.
    """
    conf, pred = probs.max(dim=1)
    rows, labels = [], []
    for c in range(probs.shape[1]):
        members = (pred == c).nonzero().squeeze(1)
        order = torch.sort(conf[members], descending=True, stable=True).indices
        if k > 0:
            order = order[:k]
        rows.append(members[order])
        labels.append(torch.full((len(order),), c, dtype=torch.long))
    return torch.cat(rows), torch.cat(labels)


def ensemble_loss(logits, targets):
    """Sum over prompts of their CE (``logits`` [E, B, K]): each prompt gets the gradient it would alone."""
    return sum(F.cross_entropy(member, targets) for member in logits)


# ---------------------------------------------------------------------------- prompt learner
class PromptLearner(TrainableState):
    """``ENSEMBLE`` sets of ``n_ctx`` context vectors shared by all classes; checkpoints hold only them."""

    def __init__(self, clip_model, classnames, n_ctx, ctx_init="", n_prompts=1):
        super().__init__()
        dim = clip_model.ln_final.weight.shape[0]
        embed = clip_model.token_embedding
        if ctx_init:
            init_tokens = clip.tokenize(ctx_init.replace("_", " ")).to(embed.weight.device)
            n_ctx = int((init_tokens[0] > 0).sum()) - 2  # minus start/end tokens
            with torch.no_grad():
                init_vectors = embed(init_tokens)[0, 1:1 + n_ctx].float()
            prefix_text = ctx_init.replace("_", " ")
        else:
            prefix_text = " ".join(["X"] * n_ctx)
        ctx = torch.empty(n_prompts, n_ctx, dim)
        nn.init.normal_(ctx, std=0.02)
        if ctx_init:
            ctx[0] = init_vectors.cpu()
        self.ctx = nn.Parameter(ctx)
        self.n_ctx = n_ctx
        self.prefix_text = prefix_text

        prompts = ["{} {}.".format(prefix_text, name.replace("_", " ")) for name in classnames]
        try:
            tokens = clip.tokenize(prompts, context_length=clip_model.context_length).to(embed.weight.device)
        except RuntimeError as exc:
            raise UserError("UPL: a prompt does not fit CLIP's {} tokens ({}); lower TRAINER.UPL.N_CTX".format(
                clip_model.context_length, exc)) from None
        with torch.no_grad():
            token_emb = embed(tokens).float()
        # Start token and "<classname>. <end> <pad>..." stay fixed; rebuilt from the class names, not saved.
        self.register_buffer("token_prefix", token_emb[:, :1], persistent=False)
        self.register_buffer("token_suffix", token_emb[:, 1 + n_ctx:], persistent=False)
        self.register_buffer("eot_index", tokens.argmax(dim=-1).long(), persistent=False)

    @property
    def n_prompts(self):
        return self.ctx.shape[0]

    def prompt_embeddings(self):
        """``[E * K, L, dim]`` token embeddings: start token, context, class name and end."""
        e, k = self.n_prompts, self.token_prefix.shape[0]
        ctx = self.ctx[:, None].expand(e, k, -1, -1)
        prefix = self.token_prefix[None].expand(e, -1, -1, -1)
        suffix = self.token_suffix[None].expand(e, -1, -1, -1)
        return torch.cat([prefix, ctx, suffix], dim=2).flatten(0, 1)


def encode_prompt_embeddings(clip_model, prompts, eot_index):
    """CLIP's text tower on token embeddings (instead of token ids): ``[P, D]`` features."""
    x = prompts + clip_model.positional_embedding
    x = clip_model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    x = clip_model.ln_final(x)
    return x[torch.arange(x.shape[0], device=x.device), eot_index] @ clip_model.text_projection


# ---------------------------------------------------------------------------- trainer
@TRAINER_REGISTRY.register()
class UPL(ClipTrainer):
    CFG_NODE = "UPL"

    def check_cfg(self, cfg):
        c = cfg.TRAINER.UPL
        self.check_choices(cfg, {"PREC": ("fp32", "bf16"), "PSEUDO_TEMPLATES": ("upl", "dataset")})
        if c.ENSEMBLE < 1:
            raise UserError("TRAINER.UPL.ENSEMBLE={} must be at least 1".format(c.ENSEMBLE))
        if c.N_CTX < 1 and not c.CTX_INIT:
            raise UserError("TRAINER.UPL.N_CTX={} must be at least 1".format(c.N_CTX))

    # ------------------------------------------------------------------ model
    def build_method(self):
        c = self.cfg.TRAINER.UPL
        self.logit_scale = self.clip_model.logit_scale.exp().item()  # CoOp/UPL use CLIP's own scale
        learner = PromptLearner(self.clip_model, self.classnames, c.N_CTX, c.CTX_INIT, c.ENSEMBLE)
        self.prompt_learner = learner.to(self.device)
        self.optim = build_optimizer(self.prompt_learner, self.cfg.OPTIM)
        self.sched = epoch_scheduler(self.optim, self.cfg.OPTIM)  # Dassl's trace, safe on real Dassl too
        self.register_model("prompt_learner", self.prompt_learner, self.optim, self.sched)
        self._eval_text = None
        print("UPL: {} prompt(s) of {} context tokens, prefix {!r}".format(
            learner.n_prompts, learner.n_ctx, learner.prefix_text))

    def pseudo_templates(self):
        if self.cfg.TRAINER.UPL.PSEUDO_TEMPLATES == "dataset":
            return self.templates()
        # UPL's hand-written prompt per dataset is CoOp's (DATASET.TEMPLATES coop, with its rule for the
        # datasets UPL did not use); a host's dataset has none: the first of DATASET.TEMPLATES.
        template = coop_template(self.dataset_key)
        return [template] if template else self.templates()[:1]

    def text_sources(self):
        c = self.cfg.TRAINER.UPL
        return {"pseudo_label_templates": self.pseudo_templates(), "prompt": "learned context ({} tokens, init {!r}) "
                "+ class name; ensemble of {}".format(self.prompt_learner.n_ctx, c.CTX_INIT or "random", c.ENSEMBLE)}

    def class_embeddings(self):
        """``[E, K, D]`` L2-normalised text features of the current prompts."""
        learner = self.prompt_learner
        with self.autocast():
            eot = learner.eot_index.repeat(learner.n_prompts)  # prompts are ordered member-major
            feats = encode_prompt_embeddings(self.clip_model, learner.prompt_embeddings(), eot)
        return F.normalize(feats.float(), dim=-1).view(learner.n_prompts, len(self.classnames), -1)

    def prompt_logits(self, image_feats, text=None):
        text = self.class_embeddings() if text is None else text
        return self.logit_scale * torch.einsum("bd,ekd->ebk", image_feats, text)

    # ------------------------------------------------------------------ pseudo-labels
    @torch.no_grad()
    def zero_shot_train_probs(self):
        """Zero-shot probabilities over the train split (test transform): ``(probs [N, K], items)``."""
        cfg = self.cfg
        train = list(self.dm.dataset.train_x)
        loader = build_data_loader(
            cfg, sampler_type="SequentialSampler", data_source=train, batch_size=cfg.DATALOADER.TEST.BATCH_SIZE,
            tfm=build_transform(cfg, is_train=False), is_train=False, dataset_wrapper=SkipUnreadableWrapper)
        weights = self.template_classifier(self.pseudo_templates())
        by_path = {item.impath: item for item in train}
        probs, items, seen = [], [], set()
        for batch in loader:
            feats = self.encode_images(batch["img"].to(self.device))
            p = torch.softmax(self.logit_scale * feats @ weights.t(), dim=1).cpu()
            # An unreadable image is replaced by a readable neighbour: key rows by the path actually read.
            for row, path in zip(p, batch["impath"]):
                if path not in seen:
                    seen.add(path)
                    probs.append(row)
                    items.append(by_path[path])
        return torch.stack(probs), items

    def build_pseudo_labelled_set(self):
        """The top-K per predicted class as ``Datum`` items labelled with their pseudo-label."""
        probs, items = self.zero_shot_train_probs()
        rows, pseudo = select_top_k_per_class(probs, self.cfg.TRAINER.UPL.TOPK)
        selected = [Datum(impath=items[r].impath, label=int(y), domain=items[r].domain,
                          classname=self.classnames[int(y)]) for r, y in zip(rows.tolist(), pseudo.tolist())]
        # Diagnostics only: the true labels never enter the selected set.
        true = torch.tensor([item.label for item in items])
        self.pseudo_stats = {
            "diag_zero_shot_train_acc": 100.0 * (probs.argmax(1) == true).float().mean().item(),
            "diag_pseudo_label_acc": 100.0 * (pseudo == true[rows]).float().mean().item(),
            "num_pseudo_labelled": len(selected),
            "num_classes_pseudo_labelled": int(pseudo.unique().numel()),
        }
        print("UPL pseudo-labels: {num_pseudo_labelled} images over {num_classes_pseudo_labelled} classes; "
              "diagnostic accuracy {diag_pseudo_label_acc:.2f}% (zero-shot on all train images "
              "{diag_zero_shot_train_acc:.2f}%)".format(**self.pseudo_stats))
        return selected

    def before_train(self):
        super().before_train()  # resume, writer, history
        cfg = self.cfg
        selected = self.build_pseudo_labelled_set()
        self.train_loader_x = build_data_loader(
            cfg, sampler_type=cfg.DATALOADER.TRAIN_X.SAMPLER, data_source=selected,
            batch_size=cfg.DATALOADER.TRAIN_X.BATCH_SIZE, n_domain=cfg.DATALOADER.TRAIN_X.N_DOMAIN,
            n_ins=cfg.DATALOADER.TRAIN_X.N_INS, tfm=build_transform(cfg, is_train=True), is_train=True,
            dataset_wrapper=SkipUnreadableWrapper)

    # ------------------------------------------------------------------ training
    def before_epoch(self):
        # The lr in force during this epoch (update_lr at its last batch already moves to the next one).
        self._epoch_stats = {"n": 0, "loss_sum": torch.zeros((), device=self.device), "lr": self.get_current_lr()}

    def forward_backward(self, batch):
        images = batch["img"].to(self.device, non_blocking=True)
        pseudo = batch["label"].to(self.device, non_blocking=True)  # the selected set's pseudo-labels
        with torch.no_grad():
            feats = self.encode_images(images)
        loss = ensemble_loss(self.prompt_logits(feats), pseudo)
        self.model_backward_and_update(loss)
        if self.batch_idx + 1 == self.num_batches:
            self.update_lr()  # CoOp-style per-epoch schedule
        self._epoch_stats["n"] += 1
        self._epoch_stats["loss_sum"] += loss.detach()
        return {"loss": loss.detach()}

    def after_epoch(self):
        stats = self._epoch_stats
        record = {"loss": stats["loss_sum"].item() / max(stats["n"], 1), "lr": stats["lr"]}
        record.update(self.pseudo_stats)
        self.log_epoch(record)
        super().after_epoch()

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def evaluate(self, split=None):
        self._eval_text = self.class_embeddings()  # the prompts are fixed during an evaluation
        try:
            return super().evaluate(split)
        finally:
            self._eval_text = None

    def model_inference(self, images):
        return self.prompt_logits(self.encode_images(images), self._eval_text).mean(dim=0)
