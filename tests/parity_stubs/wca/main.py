"""Stand-in for WCA's main.py: main() with the globals the parity script replaces or records."""
import os

import numpy as np
import torch
import yaml
from clip import clip
from helper import accuracy, generate_weights, load_precomputed_features, set_seed
from torch.nn import functional as F
from torchvision import datasets
from torchvision.transforms import v2 as T

WRONG = os.environ.get("PARITY_STUB_BREAK") == "1"


def main(dataset_name="imagenet", num_workers=4, seed=42, device="cuda"):
    with open("cfgs/{}.yaml".format(dataset_name)) as f:
        hparams = yaml.safe_load(f)
    set_seed(seed)
    model, processor = clip.load(hparams["model_size"], device=device)

    def random_crop(image, alpha=0.1):
        w, h = image.size
        return T.RandomCrop(int(np.random.uniform(low=alpha, high=0.9) * min(h, w)))(image)

    def custom_loader(path):
        img = datasets.folder.default_loader(path)
        return torch.stack([processor(img)] + [processor(random_crop(img)) for _ in range(hparams["n_samples"])])

    patches, target, images = load_precomputed_features(
        model, dataset_name=dataset_name, model_size=hparams["model_size"], alpha=hparams["alpha"],
        n_samples=hparams["n_samples"], batch_size=hparams["batch_size"], num_workers=num_workers,
        data_path=hparams["data_path"], custom_loader=custom_loader, device=device)
    with torch.no_grad():
        for method in hparams["methods"]:
            method = list(method.values())[0]
            weights = generate_weights(method["name"], model=model, dataset_name=dataset_name,
                                       tt_scale=torch.exp(torch.tensor(method["text_scale"])), device=device)
            accuracy(images @ weights, target, images.size(0), dataset_name)
            for _ in range(hparams["n_run"]):
                picked = patches[:, torch.randint(0, patches.size(1), (hparams["patch_n"],)), :]
                scale = torch.exp(torch.tensor(method["image_scale"] + (0.1 if WRONG else 0.0)))
                w = (picked[:, :, -1] * scale).softmax(-1).unsqueeze(-1)
                composite = F.normalize((picked[:, :, :-1] * w).sum(dim=1), dim=-1)
                accuracy(composite @ weights, target, composite.size(0), dataset_name)
