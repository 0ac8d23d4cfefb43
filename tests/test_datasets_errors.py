"""Bad dataset input gives one clear line and writes nothing: missing root / folder, empty split,
stale split entry, unreadable images (skip and count, fail above DATASET.MAX_UNREADABLE), and the
verify / fetch tools' exit codes."""
import json
import os
import os.path as osp

import pytest
import torch

from fairclip.toolbox import DATASET_REGISTRY
from fairclip.toolbox.errors import UserError

from fairclip.datasets.common import SkipUnreadableWrapper, TooManyUnreadableImages
from tests.conftest import build_dataset, make_dataset_cfg, one_line
from fairclip.tools.make_miniature_data import BUILDERS


def test_empty_and_missing_root(tmp_path):
    with pytest.raises(UserError, match="DATASET.ROOT is empty.*--root") as exc:
        build_dataset("", "dtd")
    one_line(exc)
    with pytest.raises(UserError, match="dataset root .*nowhere does not exist"):
        build_dataset(tmp_path / "nowhere", "dtd")


def test_missing_dataset_folder_names_the_expected_path(tmp_path):
    with pytest.raises(UserError, match=r"expected dataset folder .*caltech-101 does not exist.*DATASETS.md") as exc:
        build_dataset(tmp_path, "caltech101")
    one_line(exc)


def test_missing_image_folder(tmp_path):
    info = BUILDERS["eurosat"](tmp_path)
    os.rename(osp.join(info["dataset_dir"], "2750"), osp.join(info["dataset_dir"], "EuroSAT"))
    with pytest.raises(UserError, match=r"expected image folder .*2750 does not exist"):
        build_dataset(tmp_path, "eurosat")


def test_missing_annotation_file(tmp_path):
    info = BUILDERS["cub"](tmp_path)
    os.remove(osp.join(info["dataset_dir"], "CUB_200_2011", "train_test_split.txt"))
    with pytest.raises(UserError, match="train_test_split.txt does not exist"):
        build_dataset(tmp_path, "cub")
    assert not osp.exists(osp.join(info["dataset_dir"], "split_zhou_CUB200.json"))


def test_empty_split(tmp_path):
    info = BUILDERS["oxford_pets"](tmp_path)
    path = osp.join(info["dataset_dir"], "split_zhou_OxfordPets.json")
    split = json.loads(open(path).read())
    split["val"] = []
    open(path, "w").write(json.dumps(split))
    with pytest.raises(UserError, match="'val' split is empty") as exc:
        build_dataset(tmp_path, "oxford_pets")
    one_line(exc)


def test_split_entry_pointing_to_a_missing_file(tmp_path):
    info = BUILDERS["stanford_cars"](tmp_path)
    rel = info["split"]["test"][0][0]
    os.remove(osp.join(info["dataset_dir"], rel))
    with pytest.raises(UserError, match=r"split_zhou_StanfordCars.json \('test' entry\): image .*{} does not "
                                        r"exist; check that DATASET.ROOT".format(rel)) as exc:
        build_dataset(tmp_path, "stanford_cars")
    one_line(exc)


def test_broken_split_file(tmp_path):
    info = BUILDERS["dtd"](tmp_path)
    open(osp.join(info["dataset_dir"], "split_zhou_DescribableTextures.json"), "w").write('{"train": [')
    with pytest.raises(UserError, match="is not valid JSON"):
        build_dataset(tmp_path, "dtd")


def test_fallback_with_a_missing_image_writes_no_split(tmp_path):
    info = BUILDERS["oxford_pets"](tmp_path, split_json=False)
    images = sorted(os.listdir(osp.join(info["dataset_dir"], "images")))
    os.remove(osp.join(info["dataset_dir"], "images", images[0]))
    with pytest.raises(UserError, match="OxfordPets annotations: image .*{} does not exist".format(images[0])):
        build_dataset(tmp_path, "oxford_pets")
    assert not osp.exists(osp.join(info["dataset_dir"], "split_zhou_OxfordPets.json"))


def test_too_few_images_for_a_split(tmp_path):
    info = BUILDERS["resisc45"](tmp_path)
    folder = osp.join(info["dataset_dir"], "NWPU-RESISC45", info["classnames"][1])
    for name in sorted(os.listdir(folder))[:4]:
        os.remove(osp.join(folder, name))
    with pytest.raises(UserError, match="class '{}' has 2 image".format(info["classnames"][1])):
        build_dataset(tmp_path, "resisc45")


# --------------------------------------------------------------------------- unreadable images
@pytest.fixture
def corrupt_dtd(tmp_path):
    """A DTD miniature whose first train image is not a JPEG any more."""
    info = BUILDERS["dtd"](tmp_path)
    bad = osp.join(info["dataset_dir"], "images", info["split"]["train"][0][0])
    with open(bad, "wb") as f:
        f.write(b"not an image at all")
    return tmp_path, bad


def test_unreadable_image_is_skipped_and_counted(corrupt_dtd):
    root, bad = corrupt_dtd
    cfg = make_dataset_cfg(root, "dtd", "DATASET.MAX_UNREADABLE", 0.5)
    ds = DATASET_REGISTRY.get("DescribableTextures")(cfg)
    wrapper = SkipUnreadableWrapper(cfg, ds.train_x, transform=None)
    with pytest.warns(UserWarning, match="cannot decode image .*{}".format(osp.basename(bad))):
        outputs = [wrapper[i] for i in range(len(wrapper))]
    assert len(outputs) == len(ds.train_x) and bad not in [o["impath"] for o in outputs]
    assert wrapper.num_unreadable == 1
    again = [wrapper[i]["impath"] for i in range(len(wrapper))]  # reported once, not counted twice
    assert wrapper.num_unreadable == 1 and bad not in again


def test_too_many_unreadable_images_stop_the_run(corrupt_dtd):
    root, bad = corrupt_dtd
    cfg = make_dataset_cfg(root, "dtd", "DATASET.MAX_UNREADABLE", 0.0)
    ds = DATASET_REGISTRY.get("DescribableTextures")(cfg)
    wrapper = SkipUnreadableWrapper(cfg, ds.train_x, transform=None)
    match = "1 of {} images cannot be decoded.*MAX_UNREADABLE".format(len(ds.train_x))
    with pytest.warns(UserWarning), pytest.raises(UserError, match=match) as exc:
        for i in range(len(wrapper)):
            wrapper[i]
    assert bad in one_line(exc)


def test_unreadable_limit_applies_through_dataloader_workers(corrupt_dtd):
    """Raised in a worker process, the error still reaches the caller as one line."""
    import torchvision.transforms as T

    root, bad = corrupt_dtd
    cfg = make_dataset_cfg(root, "dtd", "DATASET.MAX_UNREADABLE", 0.0)
    ds = DATASET_REGISTRY.get("DescribableTextures")(cfg)
    wrapper = SkipUnreadableWrapper(cfg, ds.train_x, transform=T.ToTensor())
    loader = torch.utils.data.DataLoader(wrapper, batch_size=len(ds.train_x), num_workers=1)
    with pytest.raises(TooManyUnreadableImages) as exc:
        list(loader)
    assert one_line(exc).startswith("1 of {} images cannot be decoded".format(len(ds.train_x)))


# --------------------------------------------------------------------------- tools
def test_verify_tool_table_and_exit_codes(tmp_path, capsys):
    from fairclip.tools.verify_datasets import main

    BUILDERS["dtd"](tmp_path)
    cub = BUILDERS["cub"](tmp_path)
    assert main(["--root", str(tmp_path), "--ignore-sizes"]) == 0
    out = capsys.readouterr().out
    assert "dtd" in out and "absent" in out and "status" in out
    assert not osp.exists(osp.join(cub["dataset_dir"], "split_zhou_CUB200.json")), "verify writes nothing"

    assert main(["--root", str(tmp_path), "--datasets", "dtd"]) == 1  # sizes differ from the published ones
    assert "sizes differ from the published split" in capsys.readouterr().out

    images = osp.join(cub["dataset_dir"], "CUB_200_2011", "images")
    folder = sorted(os.listdir(images))[0]
    os.remove(osp.join(images, folder, sorted(os.listdir(osp.join(images, folder)))[0]))
    assert main(["--root", str(tmp_path), "--datasets", "cub", "--ignore-sizes"]) == 1
    assert "1 image(s) missing" in capsys.readouterr().out

    assert main(["--root", str(tmp_path / "none")]) == 2


def test_verify_tool_decodes_images(corrupt_dtd, capsys):
    from fairclip.tools.verify_datasets import main

    root, bad = corrupt_dtd
    assert main(["--root", str(root), "--datasets", "dtd", "--ignore-sizes"]) == 0
    assert main(["--root", str(root), "--datasets", "dtd", "--ignore-sizes", "--decode"]) == 1
    out = capsys.readouterr().out
    assert "1 unreadable image(s), first {}".format(bad) in out


def test_fetch_splits_offline_paths(tmp_path, capsys):
    """No network: listing, keeping present files and argument errors."""
    from fairclip.tools.fetch_splits import main

    assert main(["--list"]) == 0
    assert "split_zhou_OxfordPets.json" in capsys.readouterr().out
    os.makedirs(tmp_path / "dtd")
    (tmp_path / "dtd" / "split_zhou_DescribableTextures.json").write_text("{}")
    assert main(["--root", str(tmp_path), "--datasets", "dtd"]) == 0
    assert "present" in capsys.readouterr().out
    assert main(["--root", str(tmp_path), "--datasets", "cub"]) == 2
    assert main(["--root", str(tmp_path / "none"), "--datasets", "dtd"]) == 2
