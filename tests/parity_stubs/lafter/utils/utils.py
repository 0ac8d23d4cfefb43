"""Stand-in for LaFTer's utils/utils.py: the dataset list, the two optimiser set-ups and test_prompting,
as tools/parity/lafter.py uses them, in a few lines of our own."""
import torch
import torch.nn.functional as F

lafter_datasets = ["DescribableTextures", "EuroSAT"]


class LabelSmoothingCrossEntropy(torch.nn.Module):
    def __init__(self, epsilon=0.1):
        super().__init__()
        self.epsilon = epsilon

    def forward(self, preds, target):
        logp = F.log_softmax(preds, dim=-1)
        uniform = -logp.sum(-1).mean() / preds.shape[-1]
        return self.epsilon * uniform + (1 - self.epsilon) * F.nll_loss(logp, target)


def _adamw(model, lr, trainable):
    named = [(n, p) for n, p in model.named_parameters()]
    for n, p in named:
        p.requires_grad_(trainable(n))
    decay = [p for n, p in named if p.requires_grad and "bias" not in n]
    no_decay = [p for n, p in named if p.requires_grad and "bias" in n]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def setup_text_training_utils(args, model):
    optimizer = _adamw(model, args.lr, lambda n: "adapter" in n and "adapter_pl" not in n)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(args.epochs)), LabelSmoothingCrossEntropy()


def setup_lafter_training_utils(args, model):
    def trainable(n):
        if n == "prompt_embeddings" or ("adapter" in n and "adapter_pl" not in n):
            return True
        return ("ln" in n or "bn" in n) and ("visual" in n or "transformer" in n or "ln_final" in n)
    optimizer = _adamw(model, args.lr, trainable)
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, args.mile_stones or [], 0.6), LabelSmoothingCrossEntropy()


def test_prompting(teloader, model):
    model.eval()
    hits = total = 0
    with torch.no_grad():
        for batch in teloader:
            hits += (model.eval_clip(batch["img"]).argmax(1) == batch["label"]).sum().item()
            total += len(batch["label"])
    return 100.0 * hits / max(total, 1)
