"""Stand-in for UPL's trainers/upltrainer.py: CustomCLIP and UPLTrainer with the methods the parity script
calls. The optimiser and schedule come from our Dassl mirror (the real file imports Dassl's)."""
import collections

import torch
import torch.nn as nn
import torch.nn.functional as F
from clip import clip

from fairclip.toolbox import build_optimizer
from fairclip.trainers._schedules import epoch_scheduler as build_lr_scheduler

CUSTOM_TEMPLATES = {"DescribableTextures": "{} texture."}


def load_clip_to_cpu(cfg):
    raise RuntimeError("the parity script replaces this")


class PromptLearner(nn.Module):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__()
        n_ctx = cfg.TRAINER.UPLTrainer.N_CTX
        self.ctx = nn.Parameter(torch.randn(n_ctx, clip_model.ln_final.weight.shape[0]) * 0.02)
        names = [c.replace("_", " ") for c in classnames]
        self.tokenized_prompts = clip.tokenize([" ".join(["X"] * n_ctx) + " " + n + "." for n in names])
        with torch.no_grad():
            emb = clip_model.token_embedding(self.tokenized_prompts)
        self.register_buffer("token_prefix", emb[:, :1])
        self.register_buffer("token_suffix", emb[:, 1 + n_ctx:])

    def forward(self):
        ctx = self.ctx.unsqueeze(0).expand(self.token_prefix.shape[0], -1, -1)
        return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)


class TextEncoder(nn.Module):
    def __init__(self, clip_model):
        super().__init__()
        self.clip_model = clip_model

    def forward(self, prompts, tokenized_prompts):
        m = self.clip_model
        x = m.transformer((prompts + m.positional_embedding).permute(1, 0, 2)).permute(1, 0, 2)
        x = m.ln_final(x)
        return x[torch.arange(x.shape[0]), tokenized_prompts.argmax(dim=-1)] @ m.text_projection


class CustomCLIP(nn.Module):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__()
        self.prompt_learner = PromptLearner(cfg, classnames, clip_model)
        self.tokenized_prompts = self.prompt_learner.tokenized_prompts
        self.text_encoder = TextEncoder(clip_model)
        self.clip, self.cfg, self.classnames = clip_model, cfg, classnames

    def forward(self, image):
        img = F.normalize(self.clip.encode_image(image), dim=-1)
        txt = F.normalize(self.text_encoder(self.prompt_learner(), self.tokenized_prompts), dim=-1)
        return self.clip.logit_scale.exp() * img @ txt.t(), img, txt

    def zero_shot_forward(self, image, device):
        template = CUSTOM_TEMPLATES[self.cfg.DATASET.NAME]
        tokens = clip.tokenize([template.format(c.replace("_", " ")) for c in self.classnames])
        with torch.no_grad():
            txt = F.normalize(self.clip.encode_text(tokens), dim=-1)
        img = F.normalize(self.clip.encode_image(image), dim=-1)
        return self.clip.logit_scale.exp() * img @ txt.t(), img, txt


class UPLTrainer:
    def build_model(self):
        clip_model = load_clip_to_cpu(self.cfg)
        self.model = CustomCLIP(self.cfg, self.dm.dataset.classnames, clip_model)
        for name, param in self.model.named_parameters():
            param.requires_grad_("prompt_learner" in name)
        optim = build_optimizer(self.model.prompt_learner, self.cfg.OPTIM)
        sched = build_lr_scheduler(optim, self.cfg.OPTIM)
        self.register_model("prompt_learner", self.model.prompt_learner, optim, sched)

    def register_model(self, name, model, optim, sched):
        self._models[name], self._optims[name], self._scheds[name] = model, optim, sched

    def get_current_lr(self):
        return self._optims["prompt_learner"].param_groups[0]["lr"]

    def forward_backward(self, batch):
        output = self.model(batch["img"])[0]
        loss = F.cross_entropy(output, batch["label"])
        optim = self._optims["prompt_learner"]
        optim.zero_grad()
        loss.backward()
        optim.step()
        return collections.OrderedDict(loss=loss.item())
