"""Stand-in for LaFTer's LaFTer.py: lossmeter, train_txt_cls and train_lafter (one pass of each phase as the
real script runs them), in a few lines of our own. The parity script compiles only these definitions."""
import torch


class lossmeter:
    def __init__(self):
        self.values = []

    def update(self, value):
        self.values.append(value)


def train_txt_cls(args, model):
    optimizer, _, _ = setup_text_training_utils(args, model)  # noqa: F821  (from utils.utils)
    criteria = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    for _ in range(args.txt_epochs):
        loss = model.train_txt_clas(criteria)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.txt_cls_init()


def train_lafter(args, model, tr_loader, val_loader):
    train_txt_cls(args, model)
    optimizer, scheduler, criteria = setup_lafter_training_utils(args, model)  # noqa: F821
    meter = lossmeter()
    for _ in range(args.epochs):
        model.eval()
        model.adapter.train()
        for batch in tr_loader:
            views = torch.stack(batch["img"])
            optimizer.zero_grad()
            pseudo = F.softmax(model.forward_normal_for_pl(views[0]), dim=-1).argmax(dim=1)  # noqa: F821
            loss = criteria(model.forward_aug_with_prompts(views[1]).squeeze(), pseudo)
            meter.update(loss.item())
            loss.backward()
            optimizer.step()
        scheduler.step()
        print("acc", test_prompting(val_loader, model))  # noqa: F821
