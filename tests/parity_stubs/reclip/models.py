"""Stand-in for ReCLIP's models.py: its two branches and its label propagation with the names, arguments and
attributes tools/parity/reclip.py touches, in a few lines of our own (dense propagation, SciPy's cg). One
departure: a class that propagation leaves empty keeps its centroid (the real code averages nothing, a NaN
centroid that makes every later logit NaN; on the random tiny CLIP of the tests this happens)."""
import clip
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.sparse import linalg as s_linalg

device = torch.device("cpu")


def class_embeddings(model, names, templates):
    """``[D, K]``: per class, the normalised mean of its normalised prompt embeddings."""
    cols = []
    for name in names:
        feats = F.normalize(model.encode_text(clip.tokenize([t.format(name) for t in templates])), dim=-1)
        cols.append(F.normalize(feats.mean(0), dim=-1))
    return torch.stack(cols, dim=1)


def trainable_norms(modules):
    params = []
    for m in modules:
        if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            m.requires_grad_(True)
            params += [m.weight, m.bias]
    return params


class CLIP_LN_V(nn.Module):
    def __init__(self, class_names, templates, architecture="ViT-L/14", learnable_classifier=False):
        super().__init__()
        self.base_model, self.preprocess = clip.load(name=architecture, device=device, download_root=".")
        with torch.no_grad():
            self.classification_weight = class_embeddings(self.base_model, class_names, templates)
        self.base_model.requires_grad_(False)
        self.learnable_params = trainable_norms(self.base_model.visual.modules())

    def forward(self, image):
        feats = F.normalize(self.base_model.encode_image(image), dim=1)
        self.classification_weight = F.normalize(self.classification_weight, dim=0)
        return 100.0 * feats @ self.classification_weight, feats


class CLIP_LN_T(nn.Module):
    def __init__(self, architecture="ViT-L/14", templates=("a photo of a {}.",)):
        super().__init__()
        self.base_model, self.preprocess = clip.load(name=architecture, device=device, download_root=".")
        self.templates = list(templates)
        self.base_model.requires_grad_(False)
        self.learnable_params = trainable_norms(list(self.base_model.transformer.modules()) + [self.base_model.ln_final])

    def encode_text(self, classnames, full_templates=False):
        return class_embeddings(self.base_model, classnames, self.templates if full_templates else self.templates[:1])

    def forward(self, image, class_names):
        feats = F.normalize(self.base_model.encode_image(image), dim=1)
        return 100.0 * feats @ self.encode_text(class_names), feats


class LabelPropagationCluster(nn.Module):
    def __init__(self, classification_weight, dataset_size, k=10, alpha=0.99, cut_dim=768):
        super().__init__()
        self.classification_weight = classification_weight
        self.num_class = classification_weight.shape[1]
        self.k, self.alpha, self.cut_dim = k, alpha, cut_dim
        self.feats, self.idx, self.labels = [], [], {}
        self.pseudo_labels = {}
        self.update_projection(classification_weight)
        self.update_centriods(classification_weight.t())

    def update_projection(self, classification_weight=None):
        u = torch.svd(classification_weight.float())[0][:, 1:self.cut_dim]
        self.projection_matrix = nn.Parameter((u @ u.t()).half(), requires_grad=False)

    def update_centriods(self, centriods):
        self.centriods = centriods

    def forward(self, x, idx, label):
        self.feats.append(x.detach())
        self.idx += [int(i) for i in idx]
        self.labels.update({int(i): int(y) for i, y in zip(idx, label)})

    def cg_diffusion(self, qsims, Wn, alpha=0.99, maxiter=20, tol=1e-6):
        system = np.eye(Wn.shape[0]) - alpha * Wn
        scores = np.stack([s_linalg.cg(system, q, tol=tol, maxiter=maxiter)[0] for q in qsims], axis=1)
        return np.argsort(-scores, axis=0), scores

    def perform_label_propagation(self, clear_cache=True, cluster_centriod=False):
        points = torch.cat([self.centriods, torch.cat(self.feats)]).detach()
        proj = F.normalize(points @ self.projection_matrix, dim=-1).float()
        n = len(proj)
        aff = (proj @ proj.t() + 1) / 2 * (1 - torch.eye(n))
        top, where = aff.topk(self.k, dim=1)
        w = torch.zeros(n, n).scatter_(1, where, top)
        w = (w + w.t()) / 2
        d = w.sum(1).rsqrt()
        _, scores = self.cg_diffusion(np.eye(self.num_class, n), (d[:, None] * w * d[None]).numpy(), self.alpha)
        pred = scores.argmax(1)
        self.pseudo_labels.update({i: int(p) for i, p in zip(self.idx, pred[self.num_class:])})
        acc = float(np.mean([self.pseudo_labels[i] == self.labels[i] for i in self.idx]))
        if clear_cache:
            self.feats, self.idx = [], []
        if not cluster_centriod:
            return acc
        cents = self.centriods.clone()
        for c in range(self.num_class):
            members = points[torch.from_numpy(pred == c)].float()
            if len(members):
                cents[c] = F.normalize(members.mean(0), dim=0)
        return acc, cents
