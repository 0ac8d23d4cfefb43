"""Backbone configs (configs/trainers/<TRAINER>/{vit_b16,vit_l14,rn50}.yaml): each trainer x backbone config runs
end to end (train.py's main, in-process) on a tiny CLIP of the same shape; the configs differ from vit_b32.yaml
only in the backbone; ResNet towers train their BatchNorm affine parameters with frozen running statistics."""
import json
import os

import pytest
import torch
import yaml

from tests.conftest import REPO, log_tee_undone

TRAINERS = ["ZeroshotCLIP", "CuPL", "WCA", "UPL", "MUST", "LaFTer", "ReCLIP", "DPA", "FAIR"]
BACKBONE_CONFIGS = {"vit_b16": "ViT-B/16", "vit_l14": "ViT-L/14", "rn50": "RN50"}
EVAL_ONLY = {"ZeroshotCLIP", "CuPL", "WCA"}
NORM_TUNING = {"MUST", "LaFTer", "ReCLIP", "DPA", "FAIR"}
# Deliberate differences from vit_b32.yaml, with their reason: (trainer, config) -> {dotted key: value}
DIFFERENCES = {
    ("LaFTer", "rn50"): {"TRAINER.LAFTER.N_PROMPTS": 0},  # a ResNet has no tokens to prompt
}
TINY = {  # the smallest settings that still run every part of each trainer
    "WCA": ["TRAINER.WCA.N_CROPS", "2"],
    "UPL": ["TRAINER.UPL.TOPK", "2"],
    "MUST": ["TRAINER.MUST.EMA_WARMUP_ITERS", "1"],
    "DPA": ["TRAINER.DPA.DA_HISTORY", "2"],
    "FAIR": ["TRAINER.FAIR.N_CROPS", "2", "TRAINER.FAIR.TOP_K", "1"],
    "LaFTer": ["TRAINER.LAFTER.TEXT_STEPS", "2", "TRAINER.LAFTER.EVAL_EACH_EPOCH", "False"],
    "ReCLIP": ["TRAINER.RECLIP.N_NEIGHBORS", "3", "TRAINER.RECLIP.EVAL_EACH_EPOCH", "False"],
}


@pytest.fixture(scope="session")
def stand_ins(tmp_path_factory):
    """{backbone config name: (tiny CLIP path, its input resolution)} for every backbone config."""
    from fairclip.tools.make_tiny_clip import save_tiny_clip, stand_in_kwargs

    folder = tmp_path_factory.mktemp("stand_ins")
    out = {}
    for name in BACKBONE_CONFIGS:
        kwargs = stand_in_kwargs(name)
        out[name] = (save_tiny_clip(str(folder / (name + ".pt")), **kwargs), kwargs["resolution"])
    return out


@pytest.fixture(scope="module")
def tiny_dtd(tmp_path_factory):
    from fairclip.tools.make_miniature_data import make_dtd

    root = tmp_path_factory.mktemp("data")
    make_dtd(str(root), classes=3, per_class=4, size=32)
    return str(root)


@pytest.mark.parametrize("cfg_name", sorted(BACKBONE_CONFIGS))
@pytest.mark.parametrize("trainer", TRAINERS)
def test_backbone_config_runs_on_its_stand_in(trainer, cfg_name, stand_ins, tiny_dtd, tmp_path):
    import train

    clip_path, side = stand_ins[cfg_name]
    out = str(tmp_path / "run")
    argv = ["--root", tiny_dtd, "--trainer", trainer, "--seed", "1", "--output-dir", out,
            "--dataset-config-file", os.path.join(REPO, "configs", "datasets", "dtd.yaml"),
            "--config-file", os.path.join(REPO, "configs", "trainers", trainer, cfg_name + ".yaml")]
    argv += ["--eval-only"] if trainer in EVAL_ONLY else []
    argv += ["MODEL.BACKBONE.PATH", clip_path, "INPUT.SIZE", "({0}, {0})".format(side), "DATALOADER.NUM_WORKERS", "0",
             "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "8", "OPTIM.MAX_EPOCH", "1",
             "VERBOSE", "False", *TINY.get(trainer, [])]
    with log_tee_undone():  # train.main in this process
        train.main(train.build_parser().parse_args(argv))

    result = json.load(open(os.path.join(out, "results.json")))
    assert result["trainer"] == trainer and result["cfg"] == cfg_name
    assert result["protocol"]["input_size"] == [side, side]
    assert any(f.endswith(os.path.join(trainer, cfg_name + ".yaml")) for f in result["config_files"])
    assert 0.0 <= result["metrics"]["accuracy"] <= 100.0
    assert result["protocol"]["epochs"] == (0 if trainer in EVAL_ONLY else 1)
    if trainer in NORM_TUNING:
        folder = os.path.join(out, trainer.lower())
        state = torch.load(os.path.join(folder, "model.pth.tar-1"), map_location="cpu", weights_only=False)["state_dict"]
        visual = [k for k in state if k.startswith("clip.visual.")]
        if cfg_name == "rn50":  # BatchNorm affine parameters, never their running statistics
            assert "clip.visual.bn1.weight" in visual and "clip.visual.layer1.0.bn3.bias" in visual
            assert not any("running_" in k or "num_batches" in k for k in state)
        else:
            assert "clip.visual.ln_pre.weight" in visual
        assert all(k.rsplit(".", 1)[1] in ("weight", "bias") for k in visual)


def test_backbone_configs_change_only_the_backbone():
    """Plain files (no base+delta): each repeats vit_b32.yaml except MODEL.BACKBONE.NAME, and says in its
    header which recipe it follows and which batch fits one 80 GB GPU."""
    for trainer in TRAINERS:
        folder = os.path.join(REPO, "configs", "trainers", trainer)
        base = yaml.safe_load(open(os.path.join(folder, "vit_b32.yaml")))
        for cfg_name, backbone in BACKBONE_CONFIGS.items():
            path = os.path.join(folder, cfg_name + ".yaml")
            text = open(path).read()
            config = yaml.safe_load(text)
            assert config["MODEL"]["BACKBONE"]["NAME"] == backbone, path
            config["MODEL"]["BACKBONE"]["NAME"] = base["MODEL"]["BACKBONE"]["NAME"]
            for key, value in DIFFERENCES.get((trainer, cfg_name), {}).items():
                *parents, leaf = key.split(".")
                node, base_node = config, base
                for part in parents:
                    node, base_node = node[part], base_node[part]
                assert node[leaf] == value, (path, key)
                node[leaf] = base_node[leaf]
            assert config == base, path
            header = "".join(line for line in text.splitlines(True) if line.startswith("#"))
            assert "Recipe" in header or "recipe" in header, path
            assert "fits one 80 GB GPU" in header, path
            if cfg_name == "rn50" and trainer in NORM_TUNING:
                assert "BatchNorm" in header and "running statistics frozen" in header, path


def test_resnet_tower_trains_batchnorm_affine_with_frozen_statistics(stand_ins):
    from fairclip.clip_backbone import load_clip
    from fairclip.trainers._clip_base import unfreeze_visual_layernorms, visual_norms

    model, info = load_clip(path=stand_ins["rn50"][0])
    assert info["architecture"] == "resnet" and info["input_resolution"] == stand_ins["rn50"][1]
    params = unfreeze_visual_layernorms(model)  # the old name: on a ResNet, the BatchNorm rule
    norms = visual_norms(model)
    assert norms and all(isinstance(m, torch.nn.BatchNorm2d) for m in norms)
    assert {id(p) for p in params} == {id(p) for m in norms for p in (m.weight, m.bias)}
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in params}
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    weights = [p.detach().clone() for p in params]

    model.train()  # what a trainer's set_model_mode("train") does
    assert not any(m.training for m in norms)
    optim = torch.optim.SGD(params, lr=0.1)
    side = info["input_resolution"]
    loss = model.encode_image(torch.randn(4, 3, side, side) * 3 + 1).square().mean()
    loss.backward()
    optim.step()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())  # statistics untouched
    assert any(not torch.equal(w, p) for w, p in zip(weights, params))  # the affine parameters moved
