"""Write a tiny, randomly initialised CLIP checkpoint (real architecture and tokenizer, small dims).

    python -m tools.make_tiny_clip --out tiny.pt [--format state_dict|jit] [--resolution 224] [--patch 32] [--seed 0]
    python -m tools.make_tiny_clip --out tiny_rn50.pt --stand-in rn50     # the stand-in of a backbone config

Used by the tests and by smoke runs of the scripts (speed or plumbing, not accuracy). Both of CLIP's image
towers can be built: a ViT (``--patch``) or a ModifiedResNet (``--vision resnet``: the 3-conv stem, one
bottleneck per stage, attention pooling; the resolution must be a multiple of 32). ``STAND_INS`` maps each
backbone config name (``configs/trainers/<TRAINER>/<name>.yaml``) to a tiny CLIP of the same shape (the
patch size of the ViT, or the ResNet tower) and the small input size a test runs it at.
"""
import argparse
import os
import os.path as osp
import warnings

import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from clip.model import CLIP

# backbone config name -> tiny CLIP of the same shape, at a small input size (INPUT.SIZE of a test run)
STAND_INS = {
    "vit_b32": {"vision": "vit", "patch": 32, "resolution": 64},    # ViT-B/32: 2 x 2 patches
    "vit_b16": {"vision": "vit", "patch": 16, "resolution": 32},    # ViT-B/16: 2 x 2 patches
    "vit_l14": {"vision": "vit", "patch": 14, "resolution": 28},    # ViT-L/14: 2 x 2 patches
    "rn50": {"vision": "resnet", "resolution": 32},                  # RN50: ModifiedResNet, 1 x 1 after pooling
}


def build_tiny_clip(resolution=224, patch=32, embed_dim=32, width=64, layers=1, text_layers=1, seed=0,
                    vision="vit", resnet_width=8):
    """A tiny CLIP. ``vision="vit"``: a ViT of ``layers`` blocks of ``width`` with ``patch`` x ``patch``
    patches; ``vision="resnet"``: a ModifiedResNet with one bottleneck per stage and stem width
    ``resnet_width`` (its attention pool works on ``32 * resnet_width`` channels)."""
    torch.manual_seed(seed)
    if vision == "vit":
        vision_layers, vision_width, vision_patch = layers, width, patch
    elif vision == "resnet":
        if resolution % 32:
            raise ValueError("a ResNet CLIP needs a resolution that is a multiple of 32, got {}".format(resolution))
        vision_layers, vision_width, vision_patch = (1, 1, 1, 1), resnet_width, None
    else:
        raise ValueError("vision must be vit or resnet, got {!r}".format(vision))
    # vocab 49408 and context 77 keep the real BPE tokenizer usable; heads = width // 64.
    return CLIP(
        embed_dim=embed_dim, image_resolution=resolution, vision_layers=vision_layers, vision_width=vision_width,
        vision_patch_size=vision_patch, context_length=77, vocab_size=49408, transformer_width=width,
        transformer_heads=max(1, width // 64), transformer_layers=text_layers,
    ).eval()


def stand_in_kwargs(cfg_name):
    """``build_tiny_clip`` arguments of the stand-in for backbone config ``cfg_name`` (e.g. "rn50")."""
    if cfg_name not in STAND_INS:
        raise ValueError("no tiny stand-in for config {!r}; known: {}".format(cfg_name, ", ".join(STAND_INS)))
    return dict(STAND_INS[cfg_name])


def save_tiny_clip(out, fmt="state_dict", **kwargs):
    model = build_tiny_clip(**kwargs)
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    if fmt == "state_dict":
        torch.save(model.state_dict(), out)
    elif fmt == "jit":
        res = model.visual.input_resolution
        example_image = torch.zeros(1, 3, res, res)
        example_text = torch.zeros(1, 77, dtype=torch.long)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated, but OpenAI's files are TorchScript
            traced = torch.jit.trace(model, (example_image, example_text), check_trace=False)
            torch.jit.save(traced, out)
    else:
        raise ValueError("format must be state_dict or jit, got {!r}".format(fmt))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--format", default="state_dict", choices=["state_dict", "jit"])
    parser.add_argument("--stand-in", default="", choices=[""] + sorted(STAND_INS),
                        help="the tiny stand-in of a backbone config (sets --vision, --patch, --resolution)")
    parser.add_argument("--vision", default="vit", choices=["vit", "resnet"])
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    kwargs = dict(vision=args.vision, resolution=args.resolution, patch=args.patch)
    if args.stand_in:
        kwargs.update(stand_in_kwargs(args.stand_in))
    save_tiny_clip(args.out, args.format, seed=args.seed, **kwargs)
    print(args.out)


if __name__ == "__main__":
    main()
