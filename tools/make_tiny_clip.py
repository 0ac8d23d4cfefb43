"""Write a tiny, randomly initialised CLIP checkpoint (real architecture and tokenizer, small dims).

    python -m tools.make_tiny_clip --out tiny.pt [--format state_dict|jit] [--resolution 224] [--patch 32] [--seed 0]

Used by the tests and by smoke runs of the scripts (speed or plumbing, not accuracy).
"""
import argparse
import os
import os.path as osp
import warnings

import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from clip.model import CLIP


def build_tiny_clip(resolution=224, patch=32, embed_dim=32, width=64, layers=1, text_layers=1, seed=0):
    torch.manual_seed(seed)
    # vocab 49408 and context 77 keep the real BPE tokenizer usable; heads = width // 64.
    return CLIP(
        embed_dim=embed_dim, image_resolution=resolution, vision_layers=layers, vision_width=width,
        vision_patch_size=patch, context_length=77, vocab_size=49408, transformer_width=width,
        transformer_heads=max(1, width // 64), transformer_layers=text_layers,
    ).eval()


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
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    save_tiny_clip(args.out, args.format, resolution=args.resolution, patch=args.patch, seed=args.seed)
    print(args.out)


if __name__ == "__main__":
    main()
