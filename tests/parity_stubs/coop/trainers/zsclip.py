"""Stand-in for CoOp's trainers/zsclip.py: the interface tools/parity/zsclip.py uses."""
import os

from clip import clip  # OpenAI's package: this stand-in has no clip folder of its own

CUSTOM_TEMPLATES = {"DescribableTextures": "{} texture.", "OxfordPets": "a photo of a {}, a type of pet."}
WRONG = os.environ.get("PARITY_STUB_BREAK") == "1"


def load_clip_to_cpu(cfg):
    raise RuntimeError("the parity script replaces this")


def _normalise(x):
    return x / x.norm(dim=-1, keepdim=True)


class ZeroshotCLIP:
    def build_model(self):
        self.clip_model = load_clip_to_cpu(self.cfg)
        template = CUSTOM_TEMPLATES[self.cfg.DATASET.NAME]
        names = [c.replace("_", " ") for c in self.dm.dataset.classnames]
        self.text_features = _normalise(self.clip_model.encode_text(clip.tokenize([template.format(n) for n in names])))

    def model_inference(self, image):
        scale = self.clip_model.logit_scale.exp() * (1.01 if WRONG else 1.0)
        return scale * _normalise(self.clip_model.encode_image(image)) @ self.text_features.t()


class ZeroshotCLIP2(ZeroshotCLIP):
    templates = ["a photo of a {}.", "itap of a {}."]

    def build_model(self):
        self.clip_model = load_clip_to_cpu(self.cfg)
        self.templates += [CUSTOM_TEMPLATES[self.cfg.DATASET.NAME]]
        names = [c.replace("_", " ") for c in self.dm.dataset.classnames]
        total = 0
        for template in self.templates:
            total = total + _normalise(self.clip_model.encode_text(clip.tokenize([template.format(n) for n in names])))
        self.text_features = _normalise(total / len(self.templates))
