"""Zero-shot CLIP: classify with the class-name template embeddings (no training).

``DATASET.TEMPLATES`` picks the prompts. The method config sets ``coop``, the dataset's one hand-written
template, so that this is CoOp's ``ZeroshotCLIP`` (docs/parity.md); ``ensemble`` gives CLIP's prompt
ensemble for the dataset, ``single`` "a photo of a {}.", or a JSON list of templates. Each class embedding
is the normalised mean of its normalised template embeddings; the logits are CLIP's scale times the cosine.
CoOp runs CLIP in fp16; ``PREC`` here is fp32 or bf16 autocast. Run with ``--eval-only``.
"""
from yacs.config import CfgNode as CN

from fairclip.toolbox import TRAINER_REGISTRY

from ._clip_base import ClipTrainer


def add_config(cfg):
    cfg.TRAINER.ZSCLIP = CN()
    cfg.TRAINER.ZSCLIP.PREC = "fp32"  # fp32 or bf16 (autocast) for the image tower


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(ClipTrainer):
    CFG_NODE = "ZSCLIP"
    SUPPORTS_DDP = True  # training-free: evaluation is sharded over processes

    def build_method(self):
        self.class_weights = self.build_classifier()  # [K, D], L2-normalised
        # CLIP's learned temperature (100 for OpenAI weights); argmax does not depend on it.
        self.logit_scale = self.clip_model.logit_scale.exp().item()

    def build_classifier(self):
        return self.template_classifier()

    def model_inference(self, images):
        return self.logit_scale * self.encode_images(images) @ self.class_weights.t()
