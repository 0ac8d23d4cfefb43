"""The synthetic world: generator determinism and layout, committed texts, tiny CLIP pretraining, cache."""
import json
import os
import os.path as osp
import re
import threading

import pytest
import torch

from tests.synthetic_world import build_synthetic_world
from fairclip.toolbox.errors import UserError
from fairclip.tools import make_synthetic as ms
from fairclip.tools import pretrain_tiny_clip as pt

SMALL = dict(per_class_train=2, per_class_val=1, per_class_test=2, per_class_source=2)
TINY_PRETRAIN = dict(steps=3, batch_size=8, warmup=1, threads=1)


def _tree_bytes(folder):
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = osp.join(dirpath, name)
            with open(path, "rb") as f:
                out[osp.relpath(path, folder)] = f.read()
    return out


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    ms.generate(root, seed=0, **SMALL)
    return root


def test_generator_is_deterministic(small_world, tmp_path):
    again = str(tmp_path / "again")
    ms.generate(again, seed=0, **SMALL)
    first, second = _tree_bytes(osp.join(small_world, ms.DATASET_DIR)), _tree_bytes(osp.join(again, ms.DATASET_DIR))
    assert sorted(first) == sorted(second)
    assert [k for k in first if first[k] != second[k]] == []
    other = str(tmp_path / "other_seed")
    ms.generate(other, seed=1, **SMALL)
    third = _tree_bytes(osp.join(other, ms.DATASET_DIR))
    pngs = [k for k in first if k.endswith(".png")]
    assert sum(first[k] != third[k] for k in pngs) == len(pngs)


def test_split_file_layout_and_sizes(small_world):
    base = osp.join(small_world, ms.DATASET_DIR)
    with open(osp.join(base, ms.SPLIT_FILE)) as f:
        split = json.load(f)
    names = [s.name for s in ms.class_specs()]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert 16 <= len(names) <= 32
    assert set(split) == {"train", "val", "test"}
    for key, per_class in (("train", 2), ("val", 1), ("test", 2)):
        items = split[key]
        assert len(items) == per_class * len(names)
        for rel, label, cname in items:
            assert names[label] == cname
            assert rel.startswith(cname + "/") and osp.isfile(osp.join(base, "images", rel))
    all_rel = [it[0] for key in split for it in split[key]]
    assert len(set(all_rel)) == len(all_rel)  # no image in two splits
    assert sorted(os.listdir(osp.join(base, "images"))) == names  # a DTD-style folder scan gives the same labels


def test_source_pairs(small_world):
    src = osp.join(small_world, ms.DATASET_DIR, "source")
    with open(osp.join(src, "captions.json")) as f:
        pairs = json.load(f)
    assert len(pairs) == 2 * len(ms.class_specs())
    specs = {s.name: s for s in ms.class_specs()}
    for p in pairs:
        assert osp.isfile(osp.join(src, p["image"]))
        assert p["captions"] and all(isinstance(c, str) and c for c in p["captions"])
        assert p["group"] in specs


def test_committed_texts_match_the_generator():
    names_text, desc = ms.texts_content()
    with open(ms.CLASSNAMES_PATH) as f:
        assert f.read() == names_text, "run: python -m tools.make_synthetic --write-texts"
    with open(ms.DESCRIPTIONS_PATH) as f:
        assert json.load(f) == desc, "run: python -m tools.make_synthetic --write-texts"
    assert list(desc) == names_text.split()


def test_descriptions_follow_the_rules():
    import clip

    _, desc = ms.texts_content()
    display = {c: c.replace("_", " ") for c in desc}
    for cname, sentences in desc.items():
        assert len(set(sentences)) == len(sentences) >= 10
        for s in sentences:
            subject = s.split(",", 1)[0].lower()
            assert display[cname] in subject
            others = [d for c, d in display.items() if c != cname and re.search(r"\b" + re.escape(d) + r"\b", subject)]
            assert others == []
        clip.tokenize(sentences)  # raises if a sentence is longer than the 77-token context


def test_generator_cli_errors(tmp_path, capsys):
    assert ms.main(["--root", str(tmp_path), "--per-class-train", "0"]) == 2
    assert "--per-class-train" in capsys.readouterr().err
    assert ms.main([]) == 2


def test_truncated_text_encoder_matches_clip(small_world):
    import clip

    torch.manual_seed(0)
    model = pt.build_tiny_clip().eval()
    tokens = clip.tokenize(["a red circle dot.", "a photo of a blue hexagon ring, which has six blunt corners."])
    with torch.no_grad():
        assert torch.allclose(pt.encode_text(model, tokens), model.encode_text(tokens), atol=1e-5)


def test_tiny_pretraining_gives_a_checkpoint_build_model_reads(small_world, tmp_path):
    import clip

    out = str(tmp_path / "tiny.pt")
    pt.pretrain(small_world, out, seed=0, log=lambda *a: None, **TINY_PRETRAIN)
    state = torch.load(out, map_location="cpu", weights_only=True)
    model = clip.model.build_model(dict(state)).float()
    assert model.visual.input_resolution == pt.ARCH["image_resolution"]
    assert model.context_length == 77 and model.vocab_size == 49408
    assert model.visual.conv1.weight.shape[-1] == pt.ARCH["vision_patch_size"]
    with torch.no_grad():
        img = model.encode_image(torch.zeros(1, 3, 32, 32))
        txt = model.encode_text(clip.tokenize(["a red circle dot."]))
    assert img.shape == txt.shape == (1, pt.ARCH["embed_dim"])
    acc = pt.zero_shot_accuracy(model, small_world, split="test")
    assert 0.0 <= acc <= 100.0
    # Same seed -> same weights.
    again = str(tmp_path / "again.pt")
    pt.pretrain(small_world, again, seed=0, log=lambda *a: None, **TINY_PRETRAIN)
    other = torch.load(again, map_location="cpu", weights_only=True)
    assert all(torch.equal(state[k], other[k]) for k in state)


def test_pretraining_without_data_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(UserError, match="captions.json"):
        pt.read_source(str(tmp_path))
    assert pt.main(["--root", str(tmp_path), "--out", str(tmp_path / "x.pt")]) == 2
    assert "make_synthetic" in capsys.readouterr().err


def test_world_cache_builds_once_even_when_two_build_at_once(tmp_path):
    args = dict(generate_args=SMALL, pretrain_args=TINY_PRETRAIN)
    results, errors = [], []

    def build():
        try:
            results.append(build_synthetic_world(cache_dir=str(tmp_path), **args))
        except Exception as exc:  # surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 2 and results[0] == results[1]
    world = results[0]
    assert osp.isfile(world["clip_path"]) and osp.isfile(osp.join(world["root"], ms.DATASET_DIR, ms.SPLIT_FILE))
    assert [n for n in os.listdir(tmp_path) if not n.startswith("synthetic-")] == []  # no temp folders left
    stamp = os.stat(world["clip_path"]).st_mtime_ns
    assert build_synthetic_world(cache_dir=str(tmp_path), **args) == world
    assert os.stat(world["clip_path"]).st_mtime_ns == stamp
