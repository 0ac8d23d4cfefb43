"""CLIP loading, the text-feature cache, the zero-shot trainers end to end, and clear errors."""
import json
import os

import pytest
import torch

from tests.conftest import REPO, log_tee_undone, run_cli, train_py
from fairclip.toolbox.errors import UserError


def test_both_file_formats_load_to_the_same_model(tiny_clip, tiny_clip_jit):
    from fairclip.clip_backbone import load_clip

    a, info_a = load_clip(path=tiny_clip)
    b, info_b = load_clip(path=tiny_clip_jit)
    assert info_a["fingerprint"] == info_b["fingerprint"] and info_a["input_resolution"] == 224
    x = torch.randn(2, 3, 224, 224)
    assert torch.allclose(a.encode_image(x), b.encode_image(x), atol=1e-5)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in a.parameters())


def test_missing_or_bad_weights_give_one_clear_line(tmp_path):
    from fairclip.clip_backbone import load_clip

    with pytest.raises(UserError, match="MODEL.BACKBONE.PATH=.*does not exist"):
        load_clip(path=str(tmp_path / "nope.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="neither a TorchScript archive nor a state dict"):
        load_clip(path=str(junk))
    torch.save({"foo": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="does not hold CLIP weights"):
        load_clip(path=str(tmp_path / "other.pt"))
    with pytest.raises(UserError, match="is not an OpenAI CLIP model"):
        load_clip(name="ViT-B/33")


def test_named_model_offline_says_where_to_put_the_weights(tmp_path):
    """The test environment routes HTTP(S) to a dead local proxy: the download fails without network."""
    from fairclip.clip_backbone import load_clip

    with pytest.raises(UserError) as err:
        load_clip(name="ViT-B/32", download_root=str(tmp_path))
    msg = str(err.value)
    assert "cannot download CLIP ViT-B/32" in msg and "ViT-B-32.pt" in msg and str(tmp_path) in msg
    assert "MODEL.BACKBONE.PATH" in msg and "\n" not in msg


def test_text_features_are_cached_per_model_and_texts(tiny_clip, tmp_path):
    from fairclip.clip_backbone import encode_texts, load_clip

    model, info = load_clip(path=tiny_clip)
    texts = ["a photo of a cat.", "a photo of a dog."]
    first = encode_texts(model, texts, info["fingerprint"], str(tmp_path))
    files = os.listdir(tmp_path / "text")
    assert len(files) == 1 and torch.allclose(first.norm(dim=-1), torch.ones(2))
    # Zero the text tower: a cache hit must still return the original features.
    for p in model.transformer.parameters():
        p.data.zero_()
    assert torch.equal(encode_texts(model, texts, info["fingerprint"], str(tmp_path)), first)
    encode_texts(model, texts[::-1], info["fingerprint"], str(tmp_path))
    assert len(os.listdir(tmp_path / "text")) == 2  # other texts -> another entry


class _PlantsAFile:
    """A pickle that would create a file when loaded with weights_only=False."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_clips_differing_in_one_text_block_never_share_cached_features(tmp_path):
    """The cache key covers every text-tower tensor: a CLIP whose text transformer differs in one block
    gets its own features and its own fingerprint (the one results.json records)."""
    from fairclip.clip_backbone import encode_texts, load_clip
    from fairclip.tools.make_tiny_clip import build_tiny_clip

    state = build_tiny_clip().state_dict()
    torch.save(state, tmp_path / "a.pt")
    state = dict(state)
    state["transformer.resblocks.0.mlp.c_fc.weight"] = state["transformer.resblocks.0.mlp.c_fc.weight"] * 1.5
    torch.save(state, tmp_path / "b.pt")
    (model_a, info_a), (model_b, info_b) = load_clip(path=str(tmp_path / "a.pt")), load_clip(path=str(tmp_path / "b.pt"))
    assert info_a["fingerprint"] != info_b["fingerprint"]
    texts, cache = ["a photo of a cat.", "a photo of a dog."], str(tmp_path / "cache")
    feats_a = encode_texts(model_a, texts, info_a["fingerprint"], cache)
    feats_b = encode_texts(model_b, texts, info_b["fingerprint"], cache)  # same texts, same cache folder
    fresh_b = encode_texts(model_b, texts, info_b["fingerprint"], str(tmp_path / "fresh"))
    assert torch.equal(feats_b, fresh_b) and not torch.allclose(feats_a, feats_b)


def test_weights_are_hashed_once_per_file(tiny_clip, tmp_path):
    """The fingerprint is kept in a side file under the weights file's path, size and mtime."""
    from fairclip.clip_backbone import load_clip
    from fairclip.clip_backbone.loading import FINGERPRINT_FILE, default_cache_dir

    clip_file = tmp_path / "clip.pt"
    clip_file.write_bytes(open(tiny_clip, "rb").read())
    real = load_clip(path=str(clip_file))[1]["fingerprint"]
    index_path = os.path.join(default_cache_dir(), FINGERPRINT_FILE)
    index = json.load(open(index_path))
    entry = index["files"][str(clip_file)]
    assert entry["fingerprint"] == real and entry["size"] == clip_file.stat().st_size
    entry["fingerprint"] = "planted"
    json.dump(index, open(index_path, "w"))
    assert load_clip(path=str(clip_file))[1]["fingerprint"] == "planted"  # read from the side file, not rehashed
    stat = clip_file.stat()
    os.utime(clip_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))  # the file changed: hash it again
    assert load_clip(path=str(clip_file))[1]["fingerprint"] == real


def test_damaged_or_foreign_text_cache_is_one_line_and_runs_no_code(tiny_clip, tmp_path):
    from fairclip.clip_backbone import encode_texts, load_clip

    model, info = load_clip(path=tiny_clip)
    texts = ["a photo of a cat."]
    encode_texts(model, texts, info["fingerprint"], str(tmp_path))
    path = tmp_path / "text" / os.listdir(tmp_path / "text")[0]
    marker = tmp_path / "code_ran"
    for content in (os.urandom(path.stat().st_size), None):
        if content is None:
            torch.save({"key": "x", "features": _PlantsAFile(str(marker))}, path)
        else:
            path.write_bytes(content)
        with pytest.raises(UserError) as err:
            encode_texts(model, texts, info["fingerprint"], str(tmp_path))
        msg = str(err.value)
        assert str(path) in msg and "delete" in msg and "\n" not in msg
    assert not marker.exists()
    torch.save({"key": "another", "features": torch.zeros(1, 4), "sha256": ""}, path)
    with pytest.raises(UserError, match="stale or foreign"):
        encode_texts(model, texts, info["fingerprint"], str(tmp_path))


@pytest.mark.parametrize("method,trainer", [("zsclip", "ZeroshotCLIP"), ("cupl", "CuPL")])
def test_zero_shot_scripts_write_results_and_skip_finished_seeds(method, trainer, mini_dtd, tiny_clip, tmp_path):
    out = str(tmp_path / "output")
    env = {"DATA": mini_dtd, "OUTPUT": out, "SEEDS": "1 2"}
    res = run_cli(["bash", os.path.join(REPO, "scripts", method, "main.sh"), "dtd", "MODEL.BACKBONE.PATH", tiny_clip,
                   "DATALOADER.NUM_WORKERS", "0"], env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    for seed in (1, 2):
        run_dir = os.path.join(out, "dtd", trainer, "vit_b32", "seed{}".format(seed))
        result = json.load(open(os.path.join(run_dir, "results.json")))
        assert result["trainer"] == trainer and result["seed"] == seed and result["dataset"] == "DescribableTextures"
        assert 0 <= result["metrics"]["accuracy"] <= 100 and len(result["metrics"]["per_class_accuracy"]) == 3
        proto = result["protocol"]
        assert proto["split"] == "test" and proto["selection"] == "none (no training)" and proto["epochs"] == 0
        assert proto["world_size"] == 1 and proto["toolbox_backend"] == "builtin"
        assert ("descriptions" in proto["text"]) == (trainer == "CuPL")
        log = open(os.path.join(run_dir, "log.txt")).read()
        assert "Toolbox backend: builtin" in log and "* accuracy:" in log
    res = run_cli(["bash", os.path.join(REPO, "scripts", method, "main.sh"), "dtd", "MODEL.BACKBONE.PATH", tiny_clip],
                  env=env)
    assert res.returncode == 0 and res.stdout.count("skipping") == 2


def test_cupl_reads_a_user_cupl_file_and_names_missing_classes(mini_dtd, tiny_clip, tmp_path):
    base = ["--root", mini_dtd, "--trainer", "CuPL", "--eval-only",
            "--dataset-config-file", os.path.join(REPO, "configs/datasets/dtd.yaml"),
            "--config-file", os.path.join(REPO, "configs/trainers/CuPL/vit_b32.yaml")]
    opts = ["MODEL.BACKBONE.PATH", tiny_clip, "DATALOADER.NUM_WORKERS", "0"]
    names = [line.strip() for line in open(os.path.join(REPO, "datasets/classnames/dtd.txt"))][:3]
    good = tmp_path / "cupl.json"
    # CuPL files spell keys their own way (capitals, spaces): they still match.
    good.write_text(json.dumps({n.upper().replace("_", " "): ["a photo of {} texture.".format(n)] for n in names}))
    res = train_py(*base, "--output-dir", tmp_path / "ok", *opts, "DATASET.DESCRIPTIONS", good)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.load(open(tmp_path / "ok" / "results.json"))["protocol"]["text"]["descriptions"] == str(good)
    bad = tmp_path / "partial.json"
    bad.write_text(json.dumps({names[0]: ["x"]}))
    res = train_py(*base, "--output-dir", tmp_path / "bad", *opts, "DATASET.DESCRIPTIONS", bad)
    assert res.returncode == 2
    assert str(bad) in res.stderr and names[1] in res.stderr and names[2] in res.stderr
    assert not os.path.exists(tmp_path / "bad" / "results.json")


def test_bad_command_lines_fail_with_one_line(mini_dtd, tiny_clip, tmp_path, capsys):
    """train.py's entry point, in this process: exit status 2 and exactly one ``ERROR:`` line, no traceback."""
    import train

    base = ["--root", mini_dtd, "--trainer", "ZeroshotCLIP", "--eval-only", "--output-dir", str(tmp_path / "o"),
            "--dataset-config-file", os.path.join(REPO, "configs/datasets/dtd.yaml")]
    zs_cfg = os.path.join(REPO, "configs/trainers/ZeroshotCLIP/vit_b32.yaml")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("OPTIM:\n  LERNING_RATE: 0.1\n")
    cases = [
        (["--config-file", str(tmp_path / "missing.yaml")], "method config file"),
        (["--config-file", str(bad_yaml)], "unknown config key 'OPTIM.LERNING_RATE' (check the spelling"),
        (["--config-file", zs_cfg, "OPTIM.LRR", "0.1"], "unknown config key 'OPTIM.LRR'"),
        (["--config-file", zs_cfg, "OPTIM.LR"], "KEY VALUE pairs"),
        (["--config-file", zs_cfg, "OPTIM.LR", "0.1", "--seed", "3"], "option --seed comes after the KEY VALUE"),
        (["--config-file", zs_cfg, "MODEL.BACKBONE.PATH", str(tmp_path / "none.pt")], "does not exist"),
        (["--config-file", zs_cfg, "--trainer", "Nope"], "--trainer 'Nope' is not a trainer; choose one of"),
        (["--config-file", zs_cfg, "DATASET.NAME", "Nope"], "DATASET.NAME 'Nope' is not a dataset reader"),
        (["--config-file", zs_cfg, "MODEL.BACKBONE.PATH", tiny_clip, "INPUT.SIZE", "(32, 32)"],
         "does not match the CLIP input resolution 224"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info, log_tee_undone():
            train.cli(base + extra)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, (extra, err)
        err_lines = [line for line in err.splitlines() if line.startswith("ERROR:")]
        assert len(err_lines) == 1 and message in err_lines[0], (extra, err)
        assert "Traceback" not in err
    # The same through a real process: the exit status and the single line reach the shell.
    res = train_py(*base, "--config-file", zs_cfg, "OPTIM.LRR", "0.1")
    assert res.returncode == 2 and res.stderr.strip() == "ERROR: command-line override: unknown config key " \
        "'OPTIM.LRR' (did you mean OPTIM.LR?)"


def test_unknown_dataset_in_script_lists_choices(tmp_path):
    res = run_cli(["bash", os.path.join(REPO, "scripts/zsclip/main.sh"), "stanford_carz"], env={"OUTPUT": str(tmp_path)})
    assert res.returncode == 2 and "unknown dataset 'stanford_carz'" in res.stderr and "stanford_cars" in res.stderr
