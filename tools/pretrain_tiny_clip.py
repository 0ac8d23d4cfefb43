"""Pretrain a tiny CLIP on the synthetic world's source-style image/caption pairs (CPU, about a minute).

    python -m tools.pretrain_tiny_clip --root DATA --out tiny_clip.pt [--seed 0] [--steps 500]

The model is the real ``clip.model.CLIP`` architecture (ViT image tower, causal text transformer,
CLIP's BPE tokenizer with its 49408-token vocabulary and 77-token context) with small widths, trained
with the symmetric contrastive loss. The file holds ``model.state_dict()`` in OpenAI's key layout, so
``clip.model.build_model(torch.load(path, weights_only=True))`` rebuilds it (and so does the project's CLIP loader).

Pretraining sees only ``DATA/synthetic_fg/source/`` (the source drawing style); the target dataset is
what adaptation methods are later run on. Each step pairs a batch of images with one caption per class
("group" in captions.json) present in the batch, so images of the same class are never negatives of
each other (a web-scale batch would rarely hold two pictures of the same thing), and the text tower
runs on about 25 captions instead of 64. Images get a random zoom, shift and flip.
"""
import argparse
import json
import math
import os.path as osp
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fairclip.toolbox.errors import UserError, report_error
from fairclip.toolbox.io import atomic_torch_save

DATASET_DIR = "synthetic_fg"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's pixel statistics, as in its preprocess
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Architecture (CLIP(...) arguments). Widths are multiples of 64 because build_model derives the
# number of heads as width // 64.
ARCH = dict(embed_dim=64, image_resolution=32, vision_layers=3, vision_width=64, vision_patch_size=8,
            context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=2)
DEFAULTS = dict(seed=0, steps=2400, batch_size=64, lr=2e-3, weight_decay=0.05, warmup=50, threads=2)


def build_tiny_clip():
    import clip.model

    return clip.model.CLIP(**ARCH).float()


def load_image(path, resolution):
    """Resize like CLIP's test preprocessing (bicubic, shorter side, centre crop), normalise -> CHW float tensor."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        scale = resolution / min(w, h)
        im = im.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.BICUBIC)
        w, h = im.size
        left, top = (w - resolution) // 2, (h - resolution) // 2
        im = im.crop((left, top, left + resolution, top + resolution))
        x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


def encode_text(model, tokens, token_embedding=None):
    """``model.encode_text`` computed on the tokens up to the longest end-of-text position only.

    The text transformer is causal and pools at the end-of-text token, so the padding after it never
    changes the result; skipping it makes CPU training several times faster. ``token_embedding``
    replaces ``model.token_embedding`` (used in training with a table of the used tokens only).
    """
    length = int(tokens.argmax(dim=-1).max()) + 1
    embed = token_embedding if token_embedding is not None else model.token_embedding
    x = embed(tokens[:, :length]) + model.positional_embedding[:length]
    mask = model.build_attention_mask()[:length, :length].to(x.device)
    x = x.permute(1, 0, 2)
    for block in model.transformer.resblocks:
        h = block.ln_1(x)
        x = x + block.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        x = x + block.mlp(block.ln_2(x))
    x = model.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection


def augment(x, gen):
    """Random zoom (0.8-1.25), shift (up to 7.5% of the side) and horizontal flip of a batch of images.

    The source set is small, so without this the tiny ViT memorises it instead of learning the
    attributes. Every class is mirror-symmetric, so flips keep the caption true.
    """
    n = x.shape[0]
    scale = 1.0 / torch.empty(n).uniform_(0.8, 1.25, generator=gen)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale * flip
    theta[:, 1, 1] = scale
    theta[:, :, 2] = torch.empty(n, 2).uniform_(-0.15, 0.15, generator=gen)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False).to(x.device)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def read_source(root):
    """(image tensor N x 3 x R x R, list of caption lists, group ids) from ROOT/synthetic_fg/source."""
    src = osp.join(root, DATASET_DIR, "source")
    path = osp.join(src, "captions.json")
    if not osp.isfile(path):
        raise UserError("{} not found; generate the world first: python -m tools.make_synthetic --root {}".format(path, root))
    try:
        with open(path) as f:
            pairs = json.load(f)
        rels = [p["image"] for p in pairs]
        captions = [list(p["captions"]) for p in pairs]
        groups = [p.get("group", str(i)) for i, p in enumerate(pairs)]
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError("{} is not a list of {{image, captions}} objects ({}); regenerate it with tools.make_synthetic".format(path, exc))
    if not pairs or any(not c for c in captions):
        raise UserError("{} has no pairs or an image without captions; regenerate it with tools.make_synthetic".format(path))
    images = []
    for rel in rels:
        fpath = osp.join(src, rel)
        if not osp.isfile(fpath):
            raise UserError("{} lists {} which does not exist; regenerate the world with tools.make_synthetic".format(path, fpath))
        images.append(load_image(fpath, ARCH["image_resolution"]))
    group_ids = {g: i for i, g in enumerate(sorted(set(groups)))}
    return torch.stack(images), captions, torch.tensor([group_ids[g] for g in groups])


def pretrain(root, out, seed=DEFAULTS["seed"], steps=DEFAULTS["steps"], batch_size=DEFAULTS["batch_size"],
             lr=DEFAULTS["lr"], weight_decay=DEFAULTS["weight_decay"], warmup=DEFAULTS["warmup"],
             threads=DEFAULTS["threads"], log=print, device="cpu"):
    """Train the tiny CLIP and save its state dict to ``out``; returns the model (eval mode)."""
    import clip

    if steps < 1 or batch_size < 2 or threads < 1:
        raise UserError("--steps and --threads must be >= 1 and --batch-size >= 2 (got {}, {} and {})".format(
            steps, threads, batch_size))
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    images, captions, groups = read_source(root)

    # Tokenise every distinct caption once. Captions describe the class, so each group (class) gets one
    # pool of caption indices, and every image of the group may be paired with any of them.
    texts = sorted({c for caps in captions for c in caps})
    text_index = {t: i for i, t in enumerate(texts)}
    tokens = clip.tokenize(texts)
    pools = {}
    for caps, g in zip(captions, groups.tolist()):
        pools.setdefault(g, set()).update(text_index[c] for c in caps)
    pools = {g: sorted(p) for g, p in pools.items()}
    groups_np = groups.numpy()
    # Train only the embedding rows of tokens that occur (a few hundred of 49408). With Adam and no
    # weight decay on embeddings, rows that never get a gradient never move, so this is the same
    # optimisation, minus the cost of updating the whole table every step.
    # Padding (0) stays the smallest and end-of-text (49407) the largest id, so argmax still finds it.
    used, compact_tokens = torch.unique(tokens, return_inverse=True)

    model = build_tiny_clip().to(device)
    images, compact_tokens = images.to(device), compact_tokens.to(device)
    model.train()
    used_embedding = torch.nn.Embedding.from_pretrained(model.token_embedding.weight.data[used].clone(), freeze=False)
    params = [(n, p) for n, p in model.named_parameters() if n != "token_embedding.weight"]
    params.append(("token_embedding.used", used_embedding.weight))
    decay = [p for n, p in params if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in params if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))

    n = images.shape[0]
    batch_size = min(batch_size, n)
    log("pretraining tiny CLIP on {} source images ({} distinct captions), {} steps of {}".format(n, len(texts), steps, batch_size))
    for step in range(steps):
        idx = rng.choice(n, size=batch_size, replace=False)
        # One caption per group in the batch: a text's positives are all images of its group, and
        # images of one group are never negatives of each other.
        present, position = np.unique(groups_np[idx], return_inverse=True)
        text_ids = [pools[g][rng.integers(len(pools[g]))] for g in present]
        img = F.normalize(model.encode_image(augment(images[torch.from_numpy(idx).to(device)], gen)), dim=-1)
        txt = F.normalize(encode_text(model, compact_tokens[torch.tensor(text_ids, device=device)], used_embedding), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.t()  # images x texts
        position = torch.from_numpy(position).to(device)
        members = F.one_hot(position, len(present)).t().float()
        image_loss = F.cross_entropy(logits, position)
        text_loss = -(members / members.sum(1, keepdim=True) * F.log_softmax(logits.t(), 1)).sum(1).mean()
        loss = 0.5 * (image_loss + text_loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == steps - 1:
            log("step {:4d}/{}  loss {:.3f}  ({:.0f}s)".format(step + 1, steps, loss.item(), time.time() - t0))
    if not math.isfinite(loss.item()):
        raise UserError("pretraining diverged (loss {}); lower --lr".format(loss.item()))
    model.token_embedding.weight.data[used] = used_embedding.weight.data
    model = model.cpu().eval()
    atomic_torch_save(model.state_dict(), out)
    log("saved {} ({:.0f}s)".format(out, time.time() - t0))
    return model


@torch.no_grad()
def class_embeddings(model, descriptions, classnames):
    """Mean of each class's normalised description embeddings, renormalised (K x D)."""
    import clip

    out = []
    device = model.positional_embedding.device
    for c in classnames:
        e = F.normalize(encode_text(model, clip.tokenize(descriptions[c]).to(device)), dim=-1).mean(0)
        out.append(F.normalize(e, dim=0))
    return torch.stack(out)


@torch.no_grad()
def zero_shot_accuracy(model, root, split="test", descriptions=None):
    """Accuracy (%) on a target split with description-mean class embeddings and resize-only images."""
    from fairclip.tools.make_synthetic import SPLIT_FILE, texts_content

    names, desc = texts_content()
    descriptions = descriptions or desc
    classnames = names.split()
    base = osp.join(root, DATASET_DIR)
    with open(osp.join(base, SPLIT_FILE)) as f:
        items = json.load(f)[split]
    weights = class_embeddings(model, descriptions, classnames)
    x = torch.stack([load_image(osp.join(base, "images", rel), model.visual.input_resolution) for rel, _, _ in items])
    labels = torch.tensor([lab for _, lab, _ in items])
    feats = F.normalize(model.encode_image(x), dim=-1)
    return 100.0 * (feats @ weights.t()).argmax(1).eq(labels).float().mean().item()


def main(argv=None):
    p = argparse.ArgumentParser(description="Pretrain a tiny CLIP on the synthetic world's source pairs.")
    p.add_argument("--root", required=True, help="data root holding synthetic_fg/ (from tools.make_synthetic)")
    p.add_argument("--out", required=True, help="where to save the state dict (.pt)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--threads", type=int, default=DEFAULTS["threads"],
                   help="torch CPU threads (default 2; on a busy machine 1 can be much faster)")
    p.add_argument("--no-eval", action="store_true", help="skip the zero-shot accuracy report on the target val split")
    args = p.parse_args(argv)
    try:
        model = pretrain(args.root, args.out, seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         threads=args.threads)
        if not args.no_eval:
            acc = zero_shot_accuracy(model, args.root, split="val")
            print("zero-shot accuracy on the target val split (diagnostic): {:.1f}%".format(acc))
    except UserError as exc:
        return report_error(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
