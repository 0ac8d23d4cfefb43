"""GPU-side views (run here on CPU tensors) against the CPU/PIL reference, and the decode-once cache.

The two paths draw different random numbers, so views are compared by distribution: crop positions
and sizes are read back from images whose red/green channels encode x/y, and colour statistics of
RandAugment outputs are compared sample set to sample set (two-sample KS tests, fixed seeds).
Deterministic parts (the centre view, each colour op) are compared pixel by pixel.
"""
import json
import os
import random

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from scipy.stats import ks_2samp

from fairclip.datasets.decoded_cache import CachedImages, collate_canvas, decode_resized, open_decoded_cache
from tests.conftest import build_seeded, small_fair_cfg
from fairclip.toolbox.errors import UserError
from fairclip.trainers._gpu_views import RA_OPS, GpuViews, center_view, local_crops, strong_view, weak_view
from fairclip.trainers._views import LocalCrops, strong_transform, weak_transform

S = 48
MEAN, STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
N = 400  # samples per path in the distribution tests


@pytest.fixture(scope="module")
def cfg():
    from fairclip.toolbox import get_cfg_default
    from fairclip.config import extend_cfg

    c = get_cfg_default()
    extend_cfg(c)
    c.INPUT.SIZE = (S, S)
    c.INPUT.INTERPOLATION = "bicubic"
    c.INPUT.PIXEL_MEAN, c.INPUT.PIXEL_STD = MEAN, STD
    c.INPUT.TRANSFORMS = ["normalize"]
    return c


def coordinate_image(w=120, h=90):
    """Red encodes x, green encodes y (0..255 across the image), blue a texture."""
    x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    b = 128 + 60 * np.sin(x / 9.0) * np.cos(y / 7.0)
    return np.stack([x, y, b], -1).round().astype(np.uint8)


def natural_image(w=120, h=90, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([120 + 90 * np.sin(xx / 11.0 + 1), 110 + 80 * np.cos(yy / 8.0), 100 + 70 * np.sin((xx + yy) / 13.0)], -1)
    img[h // 3:h // 2, w // 4:w // 2] = (230, 40, 30)  # a saturated patch
    return (img + rng.normal(0, 8, img.shape)).clip(0, 255).astype(np.uint8)


def unnormalize(x):
    """Normalised views -> [0, 1] (channel axis -3)."""
    shape = [3] + [1] * 2
    return x * torch.tensor(STD).view(shape) + torch.tensor(MEAN).view(shape)


def gpu_views(img, specs, n=N, seed=0):
    batch = collate_canvas([{"img": img, "label": 0, "domain": 0, "impath": "x", "index": i} for i in range(n)])
    return GpuViews(S, MEAN, STD, "bicubic", seed=seed)(batch["canvas"], batch["sizes"], specs)


def pil_views(img, transform, n=N, seed=0):
    random.seed(seed)
    torch.manual_seed(seed)
    pil = Image.fromarray(img)
    return torch.stack([transform(pil) for _ in range(n)])


def box_stats(views):
    """Per view: centre x, centre y (fractions of the image) and the x/y extents read from the gradients."""
    v = unnormalize(views)
    r, g = v[..., 0, :, :], v[..., 1, :, :]
    cx, cy = r.mean((-2, -1)), g.mean((-2, -1))
    ex = (r[..., :, -1].mean(-1) - r[..., :, 0].mean(-1))  # signed: negative when flipped
    ey = g[..., -1, :].mean(-1) - g[..., 0, :].mean(-1)
    return cx.flatten(), cy.flatten(), ex.flatten(), ey.flatten()


def assert_same_distribution(a, b, what, p_min=1e-3):
    if float(b.max() - b.min()) < 0.02:  # (nearly) fixed in the reference: equal up to resampling phase
        assert float((a - b.mean()).abs().max()) < 0.01, what
        return
    p = ks_2samp(a.numpy(), b.numpy()).pvalue
    assert p > p_min, "{}: distributions differ (KS p={:.2g}; means {:.4f} vs {:.4f})".format(
        what, p, float(a.mean()), float(b.mean()))


# ---------------------------------------------------------------------------- deterministic parts
@pytest.mark.parametrize("size", [(120, 90), (70, 130)])
def test_center_view_matches_clip_preprocessing(cfg, size):
    from fairclip.toolbox import build_transform

    img = natural_image(*size)
    ref = build_transform(cfg, is_train=False)(Image.fromarray(img))
    out = gpu_views(img, [center_view()], n=1)["img"][0]
    diff = (unnormalize(out) - unnormalize(ref)).abs() * 255
    assert diff.mean() < 0.5 and diff.max() < 3, (float(diff.mean()), float(diff.max()))


def test_center_view_from_the_test_cache_matches_clip_preprocessing(cfg, tmp_path):
    """Test splits are cached at the input size and batched as central squares (the trainer's layout)."""
    from fairclip.toolbox import build_transform

    for i, size in enumerate([(200, 150), (90, 160)]):
        path = str(tmp_path / "img{}.png".format(i))
        Image.fromarray(natural_image(*size, seed=i)).save(path)
        cached = decode_resized(path, S)
        batch = collate_canvas([{"img": cached, "label": 0, "domain": 0, "impath": path, "index": 0}], center_square=True)
        assert batch["canvas"].shape[1:3] == (S, S)
        out = GpuViews(S, MEAN, STD)(batch["canvas"], batch["sizes"], [center_view()])["img"][0]
        ref = build_transform(cfg, is_train=False)(Image.open(path).convert("RGB"))
        diff = (unnormalize(out) - unnormalize(ref)).abs() * 255
        assert diff.mean() < 0.5 and diff.max() <= 2, (size, float(diff.mean()), float(diff.max()))


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
def test_banded_resampling_weights_equal_the_dense_definition(interpolation):
    """Each source pixel p gets kernel((p + 0.5 - centre) / max(scale, 1)) inside the allowed range, rows sum to 1."""
    from fairclip.trainers._gpu_views import _FILTERS, axis_weights

    g = torch.Generator().manual_seed(0)
    b, v, in_size, out = 6, 4, 300, 48
    length = torch.rand(b, v, generator=g) * 280 + 5
    start = torch.rand(b, v, generator=g) * (in_size - length)
    lo = torch.where(torch.rand(b, v, generator=g) < 0.5, start, torch.zeros(b, v))
    hi = torch.where(lo > 0, start + length, torch.full((b, v), float(in_size)))
    kernel, _ = _FILTERS[interpolation]
    scale = length / out
    centres = start[..., None] + (torch.arange(out) + 0.5) * scale[..., None]
    pos = torch.arange(in_size) + 0.5
    dense = kernel((pos - centres[..., None]) / scale.clamp_min(1.0)[..., None, None])
    dense = dense * ((pos >= lo.floor()[..., None, None]) & (pos < hi.ceil()[..., None, None]))
    dense = dense / dense.sum(-1, keepdim=True)
    assert torch.allclose(axis_weights(start, length, lo, hi, in_size, out, interpolation), dense, atol=1e-6)


@pytest.mark.parametrize("op", ["Brightness", "Color", "Contrast", "Sharpness", "Posterize", "Solarize",
                                "AutoContrast", "Equalize"])
def test_each_colour_op_matches_pil(op):
    img = natural_image(S, S, seed=3)
    views = GpuViews(S, MEAN, STD)
    mags = views.ra_magnitudes(9)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    for sign in (1.0, -1.0):
        code = torch.tensor([float(RA_OPS.index(op))])
        ours = views._colour(x.clone(), code, torch.tensor([sign]), mags)[0]
        pil = Image.fromarray(img)
        f = 1.0 + sign * mags["enhance"]
        ref = {"Brightness": lambda: TF.adjust_brightness(pil, f), "Color": lambda: TF.adjust_saturation(pil, f),
               "Contrast": lambda: TF.adjust_contrast(pil, f), "Sharpness": lambda: TF.adjust_sharpness(pil, f),
               "Posterize": lambda: TF.posterize(pil, mags["Posterize"]),
               "Solarize": lambda: TF.solarize(pil, mags["Solarize"]), "AutoContrast": lambda: TF.autocontrast(pil),
               "Equalize": lambda: TF.equalize(pil)}[op]()
        ref = torch.from_numpy(np.array(ref)).permute(2, 0, 1).float()
        diff = (ours - ref).abs()
        assert diff.max() <= 2 and diff.mean() < 0.6, (op, sign, float(diff.max()), float(diff.mean()))


@pytest.mark.parametrize("op", ["ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"])
def test_each_geometric_op_matches_torchvision(op):
    img = natural_image(S, S, seed=4)
    views = GpuViews(S, MEAN, STD)
    mags = views.ra_magnitudes(9)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    from torchvision.transforms.autoaugment import _apply_op

    for sign in (1.0, -1.0):
        ours = views._geometric(x, torch.tensor([float(RA_OPS.index(op))]), torch.tensor([sign]), mags)[0]
        key = "Rotate" if op == "Rotate" else op
        ref = _apply_op(Image.fromarray(img), op, sign * mags[key], TF.InterpolationMode.NEAREST, None)
        ref = torch.from_numpy(np.array(ref)).permute(2, 0, 1).float()
        agree = ((ours - ref).abs().amax(0) <= 2).float().mean()
        assert agree > 0.9, (op, sign, float(agree))
        black_ours, black_ref = (ours.amax(0) == 0).float().mean(), (ref.amax(0) == 0).float().mean()
        assert abs(black_ours - black_ref) < 0.03, (op, sign, float(black_ours), float(black_ref))


def test_views_have_the_cpu_path_keys_shapes_and_are_seeded():
    img = natural_image()
    specs = [weak_view(), strong_view(), local_crops(5)]
    a, b = gpu_views(img, specs, n=3, seed=7), gpu_views(img, specs, n=3, seed=7)
    assert set(a) == {"img", "img2", "img3"}
    assert a["img"].shape == (3, 3, S, S) and a["img2"].shape == (3, 3, S, S) and a["img3"].shape == (3, 5, 3, S, S)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["img2"], gpu_views(img, specs, n=3, seed=8)["img2"])


# ---------------------------------------------------------------------------- distributions vs PIL
def test_weak_view_crop_positions_match_pil(cfg):
    for size in [(120, 90), (70, 130)]:
        img = coordinate_image(*size)
        ours = box_stats(gpu_views(img, [weak_view()])["img"])
        ref = box_stats(pil_views(img, weak_transform(cfg)))
        for name, a, b in zip(("centre x", "centre y", "extent x", "extent y"), ours, ref):
            assert_same_distribution(a, b, "weak view {} {}".format(size, name))


def test_local_crop_sides_and_positions_match_pil(cfg):
    img = coordinate_image(120, 90)
    ours = box_stats(gpu_views(img, [local_crops(4, 0.5, 0.9)], n=N // 2)["img"])
    ref = box_stats(pil_views(img, LocalCrops(cfg, n=4, min_frac=0.5, max_frac=0.9), n=N // 2))
    for name, a, b in zip(("centre x", "centre y", "extent x", "extent y"), ours, ref):
        assert_same_distribution(a, b, "local crops " + name)
    side = ours[3] * 89 / 90  # the y extent in pixels of the 90-pixel side, as a fraction of min(H, W)
    assert 0.45 < float(side.min()) and float(side.max()) < 0.95


def test_strong_view_boxes_and_flip_rate_match_pil(cfg):
    img = coordinate_image(120, 90)
    no_ra = dict(scale=(0.3, 1.0), randaugment_m=9, randaugment_n=0)
    ours = box_stats(gpu_views(img, [strong_view(**no_ra)])["img"])
    ref = box_stats(pil_views(img, strong_transform(cfg, (0.3, 1.0), 9, 0)))
    flips = [float((s[2] < 0).float().mean()) for s in (ours, ref)]
    assert all(0.4 < f < 0.6 for f in flips), flips
    for name, a, b in zip(("centre x", "centre y", "|extent x|", "extent y"), ours, ref):
        assert_same_distribution(a.abs(), b.abs(), "strong view " + name)


def test_randaugment_colour_statistics_match_pil(cfg):
    img = natural_image()
    ours = unnormalize(gpu_views(img, [strong_view((0.3, 1.0), 9, 2)])["img"]) * 255
    ref = unnormalize(pil_views(img, strong_transform(cfg, (0.3, 1.0), 9, 2))) * 255
    stats = {
        "mean": lambda v: v.mean((1, 2, 3)),
        "std": lambda v: v.std((1, 2, 3)),
        "saturation": lambda v: (v.amax(1) - v.amin(1)).mean((1, 2)),
        "black fraction": lambda v: (v.amax(1) < 1.0).float().mean((1, 2)),
    }
    for name, fn in stats.items():
        assert_same_distribution(fn(ours), fn(ref), "RandAugment " + name)


# ---------------------------------------------------------------------------- the decode-once cache
def _write_images(folder, sizes):
    paths = []
    for i, (w, h) in enumerate(sizes):
        path = os.path.join(folder, "img{}.jpg".format(i))
        Image.fromarray(natural_image(w, h, seed=i)).save(path, quality=95)
        paths.append(path)
    return paths


def test_disk_cache_is_built_once_reused_and_equals_memory(tmp_path, capsys):
    paths = _write_images(str(tmp_path), [(120, 90), (60, 200), (40, 30)])  # (w, h)
    cache = open_decoded_cache(paths, 64, "disk", str(tmp_path / "cache"))
    assert "Decoding 3 images" in capsys.readouterr().out
    assert [tuple(cache.image(i).shape) for i in range(3)] == [(64, 85, 3), (200, 60, 3), (30, 40, 3)]  # never enlarged
    again = open_decoded_cache(paths, 64, "disk", str(tmp_path / "cache"))
    assert "Decoding" not in capsys.readouterr().out  # reused, not rebuilt
    memory = open_decoded_cache(paths, 64, "memory")
    for i in range(3):
        assert np.array_equal(again.image(i), memory.image(i))
        assert np.array_equal(memory.image(i), decode_resized(paths[i], 64))
    assert len(os.listdir(str(tmp_path / "cache"))) == 3  # data, index, lock: no temp files left
    other = open_decoded_cache(paths[:2], 64, "disk", str(tmp_path / "cache"))  # another file list: another key
    assert len(other) == 2 and len(os.listdir(str(tmp_path / "cache"))) == 6


def test_unreadable_images_are_replaced_counted_and_limited(tmp_path):
    from fairclip.toolbox import Datum

    paths = _write_images(str(tmp_path), [(50, 40)] * 4)
    with open(paths[1], "wb") as f:
        f.write(b"not an image")
    with pytest.warns(UserWarning, match="cannot decode"):
        cache = open_decoded_cache(paths, 32, "memory", max_unreadable=0.3)
    assert list(cache.unreadable) == [1]
    items = [Datum(impath=p, label=i, classname=str(i)) for i, p in enumerate(paths)]
    data = CachedImages(items, cache)
    assert data[1]["impath"] == paths[2] and data[1]["label"] == 2  # the next readable item stands in
    with pytest.raises(UserError, match=r"1 of 4 images cannot be decoded.*DATASET.MAX_UNREADABLE"):
        with pytest.warns(UserWarning):
            open_decoded_cache(paths, 32, "memory", max_unreadable=0.1)


def test_cache_errors_are_one_line_and_say_how_to_fix(tmp_path):
    paths = _write_images(str(tmp_path), [(50, 40)])
    with pytest.raises(UserError, match="DATALOADER.DECODED_CACHE='ram' is not one of memory, disk"):
        open_decoded_cache(paths, 32, "ram")
    with pytest.raises(UserError, match="DECODED_CACHE_SIDE=0"):
        open_decoded_cache(paths, 0, "memory")
    folder = str(tmp_path / "cache")
    open_decoded_cache(paths, 32, "disk", folder)
    data_file = [f for f in os.listdir(folder) if f.endswith(".u8")][0]
    with open(os.path.join(folder, data_file), "ab") as f:
        f.write(b"x")  # a data file that no longer matches its index
    with pytest.raises(UserError, match="has .* bytes, its index says .*delete .* to rebuild it") as exc:
        open_decoded_cache(paths, 32, "disk", folder)
    assert "\n" not in str(exc.value)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="set DATALOADER.DECODED_CACHE_DIR to a writable folder"):
        open_decoded_cache(paths, 32, "disk", str(blocker / "sub"))


def test_disk_cache_content_is_checked_on_open(tmp_path):
    """Random bytes of the right size (or one flipped byte) in the data file: one line naming the file."""
    paths = _write_images(str(tmp_path), [(50, 40), (40, 60)])
    folder = str(tmp_path / "cache")
    open_decoded_cache(paths, 32, "disk", folder)
    data_file = os.path.join(folder, [f for f in os.listdir(folder) if f.endswith(".u8")][0])
    good = open(data_file, "rb").read()
    for bad in (os.urandom(len(good)), good[:100] + bytes([good[100] ^ 1]) + good[101:]):
        with open(data_file, "wb") as f:
            f.write(bad)
        with pytest.raises(UserError) as exc:
            open_decoded_cache(paths, 32, "disk", folder)
        msg = str(exc.value)
        assert "\n" not in msg and data_file in msg and "corrupt" in msg and "delete" in msg
    with open(data_file, "wb") as f:
        f.write(good)
    open_decoded_cache(paths, 32, "disk", folder)  # intact again: opens


def test_chunk_checksums_do_not_depend_on_how_the_data_was_written():
    from fairclip.datasets.decoded_cache import ChunkChecksums, chunk_checksums

    data = np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8)
    sums = ChunkChecksums(chunk=64)
    start = 0
    for size in (1, 63, 64, 65, 200, 7, 600):
        sums.update(data[start:start + size])
        start += size
    assert start == 1000 and sums.finish() == chunk_checksums(data, chunk=64) == chunk_checksums(data, 64, threads=1)
    assert len(chunk_checksums(data, chunk=64)) == 16


def test_canvas_batches_pad_and_record_sizes():
    imgs = [natural_image(30, 20), natural_image(10, 40)]
    batch = collate_canvas([{"img": im, "label": i, "domain": 0, "impath": str(i), "index": i} for i, im in enumerate(imgs)])
    assert batch["canvas"].shape == (2, 40, 30, 3) and batch["sizes"].tolist() == [[20, 30], [40, 10]]
    assert torch.equal(batch["canvas"][1, :40, :10], torch.from_numpy(imgs[1]))
    assert batch["canvas"][1, 5, 20].sum() == 0  # padding beyond the edge copy stays black


def test_pinned_center_loader_gives_the_worker_path_batches():
    """The threaded evaluation loader (used on CUDA) yields the DataLoader + collate_canvas batches: same
    order, pixels, padding of images smaller than the side, labels; a shard of the indices; a short last
    batch. (On CPU it runs without pinned memory and streams; the CUDA part is exercised by gpu_check.)"""
    import functools
    import types

    from fairclip.datasets.decoded_cache import DecodedCache
    from fairclip.trainers._pinned_loader import PinnedCenterLoader

    shapes = [(24, 32), (32, 24), (24, 24), (12, 20), (24, 30)] * 5  # (12, 20): smaller than the side
    arrays = [natural_image(w, h, seed=i) for i, (h, w) in enumerate(shapes)]
    items = [types.SimpleNamespace(impath="img{}.jpg".format(i), label=i % 3, domain=0) for i in range(len(arrays))]
    cache = DecodedCache([it.impath for it in items], 24, [a.shape[:2] for a in arrays], {}, arrays=arrays)
    dataset = CachedImages(items, cache)
    shard = list(range(3, 22))
    reference = torch.utils.data.DataLoader(
        dataset, batch_size=4, sampler=shard, collate_fn=functools.partial(collate_canvas, center_square=True))
    pinned = PinnedCenterLoader(dataset, shard, 4, "cpu", threads=3)
    assert len(pinned) == len(reference) == 5
    got, want = list(pinned), list(reference)
    assert [len(b["impath"]) for b in got] == [4, 4, 4, 4, 3]
    for a, b in zip(got, want):
        assert a.keys() == b.keys() and a["impath"] == b["impath"]
        for key in ("canvas", "sizes", "label", "domain", "index"):
            assert torch.equal(a[key], b[key]), key
    assert any((b["sizes"] < 24).any() for b in got)  # a padded image was exercised

# ---------------------------------------------------------------------------- the trainer on the GPU path
def _fair_trainer(root, clip_path, out, *opts):
    return build_seeded(small_fair_cfg(root, clip_path, out, *opts))


def test_fair_trains_and_tests_on_the_gpu_view_path(mini_pets, tiny_clip, tmp_path):
    cache = str(tmp_path / "decoded")
    gpu = _fair_trainer(mini_pets, tiny_clip, str(tmp_path / "gpu"), "DATALOADER.GPU_VIEWS", "always",
                        "DATALOADER.DECODED_CACHE_DIR", cache, "TRAINER.FAIR.PREC", "bf16")
    assert gpu.view_path == {"train": "gpu", "test": "gpu"}
    batch = next(iter(gpu.train_loader_x))
    assert batch["img"].shape == (4, 3, 224, 224) and batch["img3"].shape == (4, 3, 3, 224, 224)
    gpu.before_epoch()
    gpu.epoch, gpu.batch_idx = 0, 0
    assert torch.isfinite(gpu.forward_backward(batch)["loss"])
    assert 0 <= gpu.test() <= 100
    assert os.path.isfile(os.path.join(str(tmp_path / "gpu"), "results.json"))
    assert len([f for f in os.listdir(cache) if f.endswith(".json")]) == 2  # train and test (val is unused)

    # the test views equal the CPU path's CLIP preprocessing (the cache keeps these small images whole)
    cpu = _fair_trainer(mini_pets, tiny_clip, str(tmp_path / "cpu"), "DATALOADER.GPU_VIEWS", "never")
    assert cpu.view_path == {"train": "cpu-pil", "test": "cpu-pil"}
    a, b = next(iter(gpu.test_loader)), next(iter(cpu.test_loader))
    assert a["impath"] == b["impath"]
    diff = (unnormalize(a["img"]) - unnormalize(b["img"])).abs() * 255
    assert diff.mean() < 0.5 and diff.max() < 3


def test_gpu_views_mode_is_checked(mini_pets, tiny_clip, tmp_path):
    with pytest.raises(UserError, match="DATALOADER.GPU_VIEWS='on' is not one of auto, always, never"):
        _fair_trainer(mini_pets, tiny_clip, str(tmp_path / "x"), "DATALOADER.GPU_VIEWS", "on")


def test_benchmark_runs_the_view_path_end_to_end_on_cpu(tmp_path):
    """A smoke run of tools/benchmark (tiny CLIP, one step each): every workload reports a rate."""
    import sys

    from tests.conftest import run_cli

    out = tmp_path / "bench"
    res = run_cli([sys.executable, "-m", "tools.benchmark", "--device", "cpu", "--models", "tiny", "--steps", "1",
                   "--rounds", "1", "--warmup", "0", "--batch", "2", "--eval-batch", "4", "--eval-batches", "2",
                   "--classes", "3", "--decode-images", "4", "--pil-images", "2", "--out", str(out)])
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((out / "benchmark.json").read_text())
    rows = report["results"]["tiny"]
    assert all(rows[w]["images_per_s"] > 0 for w in ("zeroshot", "must_step", "fair_step", "fair_model", "gpu_views"))
    assert "fair_model_over_encoders" in report["overheads"]["tiny"]
    assert "| tiny    | fair_step" in (out / "benchmark.md").read_text()
