"""Stand-in for CuPL's classify_imagenet.py: a script that does its work when run, with the same names
(clip.load, ImagenetDataset, imagenet_templates, the prompt file path, the three classifiers and logits)."""
import json
import os

import clip
import torch
from imagenet_prompts.standard_image_prompts import imagenet_templates
from imagenetdataset import ImagenetDataset

PATH_TO_IMAGENET = "../val"
PATH_TO_PROMPTS = "./imagenet_prompts/CuPL_image_prompts.json"
WRONG = os.environ.get("PARITY_STUB_BREAK") == "1"

model, preprocess = clip.load("ViT-L/14")
model.eval()
all_images = ImagenetDataset(PATH_TO_IMAGENET, transform=preprocess)
loader = torch.utils.data.DataLoader(all_images, batch_size=512, num_workers=8)


def mean_direction(texts):
    emb = model.encode_text(clip.tokenize(texts, truncate=True).cuda())
    emb = emb / emb.norm(dim=-1, keepdim=True)
    mean = emb.mean(dim=0)
    return mean / mean.norm()


def classifier(textnames, templates, descriptions, use_templates, use_descriptions):
    with torch.no_grad():
        columns = []
        for name in textnames:
            texts = [t.format(name) for t in templates] if use_templates else []
            texts += list(descriptions[name]) if use_descriptions else []
            if WRONG and use_templates and use_descriptions:
                texts = texts[1:]
            columns.append(mean_direction(texts))
        return torch.stack(columns, dim=1).cuda()


with open(PATH_TO_PROMPTS) as f:
    gpt3_prompts = json.load(f)
names = all_images.idx_to_text
zeroshot_weights_base = classifier(names, imagenet_templates, gpt3_prompts, True, False)
zeroshot_weights_cupl = classifier(names, imagenet_templates, gpt3_prompts, False, True)
zeroshot_weights_gpt_both = classifier(names, imagenet_templates, gpt3_prompts, True, True)

with torch.no_grad():
    for images, target, num in loader:
        image_features = model.encode_image(images.cuda())
        image_features /= image_features.norm(dim=-1, keepdim=True)
        logits_base = image_features @ zeroshot_weights_base
        logits_cupl = image_features @ zeroshot_weights_cupl
        logits_both = image_features @ zeroshot_weights_gpt_both
