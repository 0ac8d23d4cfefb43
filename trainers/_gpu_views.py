"""Training and test views made on the device, for a whole batch at once, from cached uint8 images.

The same views as the CPU/PIL reference in ``trainers/_views.py`` (and CLIP's test transform):

* ``weak_view()``: resize the shorter side to the input size, random crop;
* ``strong_view()``: RandomResizedCrop(scale, ratio 3/4..4/3) + horizontal flip + RandAugment(n, m);
* ``local_crops()``: N square crops of side U(min, max) * min(H, W) at random positions, resized;
* ``center_view()``: resize the shorter side + centre crop (the test view).

How: each view is a box in the source image; every box of a batch (all views of all images) is
resampled in two batched matrix products with PIL's antialiased filters (bicubic a=-0.5 / bilinear,
taps limited to the box as ``img.crop(box).resize()`` does, horizontal then vertical with an 8-bit
intermediate), so pixels follow PIL closely. RandAugment
runs per image in its sampled op order on the resampled uint8-valued view: geometric ops by a nearest
``grid_sample`` with black fill (torchvision's defaults), colour ops as batched per-image arithmetic
that mirrors PIL's (ImageEnhance blends, posterize, solarize, autocontrast, equalize).
Random numbers come from the object's own generator on the device: no host syncs.

Known differences from the PIL path (same distributions, not the same pixels): views come from the
cached copy (shorter side <= DATALOADER.DECODED_CACHE_SIDE), so boxes are sampled at that resolution;
the random streams differ; on CUDA the resampling runs in bf16 (about +-1 grey level).

Trainers adopt this path by listing their views (see ``ClipTrainer.gpu_train_views``); the code runs on
CPU tensors too, which is how the tests compare it with the PIL path.
"""
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from fairclip.toolbox.errors import UserError

RA_OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
          "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
_OP = {name: i for i, name in enumerate(RA_OPS)}
RA_BINS = 31  # torchvision's num_magnitude_bins
_SMOOTH = [[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]  # PIL ImageFilter.SMOOTH (scale 13)


class View(NamedTuple):
    """One view of a trainer's batch (batch key img, img2, ... by position in the list)."""

    kind: str  # weak | strong | crops | center
    scale: tuple = (0.3, 1.0)  # strong: RandomResizedCrop area fraction
    ratio: tuple = (3.0 / 4.0, 4.0 / 3.0)  # strong: aspect ratio range
    ra_ops: int = 2  # strong: RandAugment ops per image
    ra_magnitude: int = 9  # strong: RandAugment magnitude (of 31 bins)
    n: int = 8  # crops: crops per image
    min_frac: float = 0.5  # crops: side ~ U(min_frac, max_frac) * min(H, W)
    max_frac: float = 0.9

    @property
    def count(self):
        return self.n if self.kind == "crops" else 1


def weak_view():
    return View("weak")


def strong_view(scale=(0.3, 1.0), randaugment_m=9, randaugment_n=2):
    return View("strong", scale=tuple(scale), ra_ops=int(randaugment_n), ra_magnitude=int(randaugment_m))


def local_crops(n=8, min_frac=0.5, max_frac=0.9):
    return View("crops", n=int(n), min_frac=float(min_frac), max_frac=float(max_frac))


def center_view():
    return View("center")


# ---------------------------------------------------------------------------- resampling
def _bicubic(x):
    x = x.abs()
    a = -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def _triangle(x):
    return (1.0 - x.abs()).clamp_min(0.0)


def _box(x):
    return ((x >= -0.5) & (x < 0.5)).to(x.dtype)


_FILTERS = {"bicubic": (_bicubic, 2.0), "bilinear": (_triangle, 1.0), "nearest": (_box, 0.5)}


def axis_weights(start, length, lo, hi, in_size, out_size, interpolation="bicubic", dtype=torch.float32):
    """Resampling matrices ``[..., out_size, in_size]``: output pixel o of the box ``[start, start+length)``
    reads source pixels p in ``[lo, hi)`` with PIL's antialiased filter (support widened by the
    downscale factor), weights normalised to sum 1. All arguments but the sizes are float tensors [...].

    Only the taps inside the filter's support are evaluated (a band of ``k`` per output pixel, ``k``
    bounded from the sizes, so no host sync) and scattered into the dense matrix."""
    kernel, support = _FILTERS[interpolation]
    device = start.device
    scale = length / out_size
    fscale = scale.clamp_min(1.0)[..., None]  # [..., 1]
    centres = start[..., None] + (torch.arange(out_size, device=device, dtype=torch.float32) + 0.5) * scale[..., None]
    k = int(math.ceil(2.0 * support * max(1.0, in_size / out_size))) + 2
    first = torch.floor(centres - support * fscale - 0.5)  # [..., out]
    taps = first[..., None] + torch.arange(k, device=device, dtype=torch.float32)  # [..., out, k]
    w = kernel((taps + 0.5 - centres[..., None]) / fscale[..., None])
    inside = (taps >= lo.floor()[..., None, None]) & (taps < hi.ceil()[..., None, None])
    inside &= (taps >= 0) & (taps < in_size)
    w = w * inside
    w = (w / w.sum(-1, keepdim=True).clamp_min(1e-12)).to(dtype)
    dense = torch.zeros(w.shape[:-1] + (in_size,), device=device, dtype=dtype)
    # add, not write: clamped out-of-range taps carry weight 0 and must not overwrite a real tap
    return dense.scatter_add_(-1, taps.clamp(0, in_size - 1).long(), w)


def resample(src, wy, wx):
    """Views ``[B, V, C, S, S]`` of ``src`` ``[B, C, H, W]`` (values 0..255) given ``wy`` ``[B, V, S, H]``,
    ``wx`` ``[B, V, S, W]`` (same dtype as ``src``)."""
    b, c, h, w = src.shape
    v, s = wy.shape[1], wy.shape[2]
    # Horizontal first (PIL's order), one product per image for all its views (wx read transposed, in place).
    cols = torch.bmm(src.reshape(b, c * h, w), wx.reshape(b, v * s, w).transpose(1, 2))  # [B, C*H, V*S]
    cols = cols.round_().clamp_(0.0, 255.0)  # an 8-bit intermediate, as PIL's two-pass resize has
    cols = cols.view(b, c, h, v, s).permute(0, 3, 2, 1, 4).reshape(b * v, h, c * s)
    out = torch.bmm(wy.reshape(b * v, s, h), cols)  # [B*V, S, C*S]
    return out.view(b, v, s, c, s).permute(0, 1, 3, 2, 4)


# ---------------------------------------------------------------------------- the view maker
class GpuViews:
    """Makes the views of a list of ``View`` specs from a uint8 canvas batch.

    ``canvas``: ``[B, Hmax, Wmax, 3]`` uint8 (images top-left aligned, see
    ``datasets.decoded_cache.collate_canvas``); ``sizes``: ``[B, 2]`` (h, w) of each image.
    """

    def __init__(self, size, mean, std, interpolation="bicubic", seed=0, device="cpu", compute_dtype=None):
        if interpolation not in _FILTERS:
            raise UserError("INPUT.INTERPOLATION={!r}: GPU views support {}".format(interpolation, ", ".join(_FILTERS)))
        self.size = int(size)
        self.interpolation = interpolation
        self.device = torch.device(device)
        self.seed = int(seed)
        self.generator = torch.Generator(device=self.device)  # checkpointed with the run (trainers._checkpoints)
        self.generator.manual_seed(self.seed)
        std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._scale, self._shift = 1.0 / (255.0 * std), mean / std
        # made once: a tensor built from a Python list is a blocking host-to-device copy (a host sync)
        self._smooth = torch.tensor(_SMOOTH, device=self.device).div(13.0).expand(3, 1, 3, 3)
        # bf16 products on CUDA (tensor cores; integers up to 256 are exact), fp32 elsewhere.
        self.compute_dtype = compute_dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)

    @classmethod
    def from_cfg(cls, cfg, device, seed=0):
        size = tuple(cfg.INPUT.SIZE)
        if size[0] != size[1]:
            raise UserError("INPUT.SIZE={}: GPU views make square views; use a square size or "
                            "DATALOADER.GPU_VIEWS off".format(size))
        return cls(size[0], cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD, cfg.INPUT.INTERPOLATION, seed, device)

    # ------------------------------------------------------------------ random numbers
    def reseed(self):
        """Restart the random stream from the seed it was made with."""
        self.generator.manual_seed(self.seed)

    def _rand(self, *shape):
        return torch.rand(shape, generator=self.generator, device=self.device)

    def _randint(self, lo, hi):
        """Uniform integers in ``[lo, hi]`` (inclusive; float tensors of whole numbers, hi >= lo)."""
        return torch.minimum(torch.floor(lo + self._rand(*lo.shape) * (hi - lo + 1.0)), hi)

    # ------------------------------------------------------------------ boxes: (x0, y0, bw, bh, lo_x, hi_x, lo_y, hi_y)
    def _resized_dims(self, h, w):
        """torchvision ``Resize(S)`` of an (h, w) image: the shorter side becomes S, the other int(S * long / short)."""
        s = float(self.size)
        new_w = torch.where(w <= h, torch.full_like(w, s), torch.floor(s * w / h))
        new_h = torch.where(w <= h, torch.floor(s * h / w), torch.full_like(h, s))
        return new_h, new_w

    def _resize_then_crop_box(self, h, w, top, left, new_h, new_w):
        sx, sy = w / new_w, h / new_h
        s = float(self.size)
        zero = torch.zeros_like(w)
        return left * sx, top * sy, s * sx, s * sy, zero, w, zero, h  # taps: the whole image (resized first)

    def _weak_boxes(self, h, w):
        new_h, new_w = self._resized_dims(h, w)
        top = self._randint(torch.zeros_like(h), new_h - self.size)
        left = self._randint(torch.zeros_like(w), new_w - self.size)
        return [t[:, None] for t in self._resize_then_crop_box(h, w, top, left, new_h, new_w)]

    def _center_boxes(self, h, w):
        new_h, new_w = self._resized_dims(h, w)
        top, left = torch.round((new_h - self.size) / 2.0), torch.round((new_w - self.size) / 2.0)
        return [t[:, None] for t in self._resize_then_crop_box(h, w, top, left, new_h, new_w)]

    def _crop_boxes(self, h, w, spec):
        b, n = h.shape[0], spec.n
        h, w = h[:, None].expand(b, n), w[:, None].expand(b, n)
        frac = spec.min_frac + (spec.max_frac - spec.min_frac) * self._rand(b, n)
        side = torch.round(frac * torch.minimum(h, w)).clamp_min(1.0)
        left = self._randint(torch.zeros_like(w), w - side)
        top = self._randint(torch.zeros_like(h), h - side)
        return left, top, side, side, left, left + side, top, top + side  # taps: inside the crop

    def _resized_crop_boxes(self, h, w, spec, tries=10):
        """torchvision ``RandomResizedCrop.get_params``, vectorised: the first of ``tries`` valid samples,
        else the centre crop clamped to the ratio range."""
        b = h.shape[0]
        area = (h * w)[:, None]
        target = area * (spec.scale[0] + (spec.scale[1] - spec.scale[0]) * self._rand(b, tries))
        log_lo, log_hi = math.log(spec.ratio[0]), math.log(spec.ratio[1])
        aspect = torch.exp(log_lo + (log_hi - log_lo) * self._rand(b, tries))
        cw, ch = torch.round(torch.sqrt(target * aspect)), torch.round(torch.sqrt(target / aspect))
        ok = (cw > 0) & (cw <= w[:, None]) & (ch > 0) & (ch <= h[:, None])
        first = ok.to(torch.uint8).argmax(1, keepdim=True)
        cw, ch = cw.gather(1, first).squeeze(1), ch.gather(1, first).squeeze(1)
        # fallback (no valid try): whole image clamped to the ratio range, centred
        in_ratio = w / h
        fw = torch.where(in_ratio > spec.ratio[1], torch.round(h * spec.ratio[1]), w)
        fh = torch.where(in_ratio < spec.ratio[0], torch.round(w / spec.ratio[0]), h)
        found = ok.any(1)
        cw, ch = torch.where(found, cw, fw), torch.where(found, ch, fh)
        top = torch.where(found, self._randint(torch.zeros_like(h), h - ch), torch.floor((h - ch) / 2.0))
        left = torch.where(found, self._randint(torch.zeros_like(w), w - cw), torch.floor((w - cw) / 2.0))
        return [t[:, None] for t in (left, top, cw, ch, left, left + cw, top, top + ch)]

    # ------------------------------------------------------------------ the views
    def __call__(self, canvas, sizes, specs):
        """``{"img": ..., "img2": ..., ...}``: one normalised float tensor per spec (crops ``[B, N, 3, S, S]``)."""
        canvas = canvas.to(self.device, non_blocking=True)
        hw = sizes.to(self.device, non_blocking=True).to(torch.float32)
        h, w = hw[:, 0], hw[:, 1]
        boxes, flips = [], []
        for spec in specs:
            if spec.kind == "weak":
                parts = self._weak_boxes(h, w)
            elif spec.kind == "center":
                parts = self._center_boxes(h, w)
            elif spec.kind == "crops":
                parts = self._crop_boxes(h, w, spec)
            elif spec.kind == "strong":
                parts = self._resized_crop_boxes(h, w, spec)
            else:
                raise ValueError("unknown view kind {!r}".format(spec.kind))
            boxes.append(parts)
            flip = self._rand(h.shape[0]) < 0.5 if spec.kind == "strong" else None
            flips.append(flip)
        x0, y0, bw, bh, lo_x, hi_x, lo_y, hi_y = (torch.cat(p, dim=1) for p in zip(*boxes))
        src = canvas.permute(0, 3, 1, 2).contiguous().to(self.compute_dtype)
        s = self.size
        wx = axis_weights(x0, bw, lo_x, hi_x, src.shape[3], s, self.interpolation, self.compute_dtype)
        wy = axis_weights(y0, bh, lo_y, hi_y, src.shape[2], s, self.interpolation, self.compute_dtype)
        start = 0
        for spec, flip in zip(specs, flips):  # a flip reverses the output columns of that view
            if flip is not None:
                wx[:, start] = torch.where(flip[:, None, None], wx[:, start].flip(-2), wx[:, start])
            start += spec.count
        views = resample(src, wy, wx).float().clamp_(0.0, 255.0)  # [B, V, 3, S, S], 0..255
        out, start = {}, 0
        for i, spec in enumerate(specs):
            part = views[:, start:start + spec.count]
            start += spec.count
            if spec.kind == "strong":
                part = self.randaugment(part[:, 0].round(), spec)[:, None]
            part = part * self._scale[:, None] - self._shift[:, None]
            part = part if spec.kind == "crops" else part[:, 0]
            out["img" if i == 0 else "img{}".format(i + 1)] = part.contiguous()
        return out

    # ------------------------------------------------------------------ RandAugment
    def ra_magnitudes(self, m):
        """Unsigned magnitude of each op at level ``m`` (torchvision's 31-bin table for an S x S image)."""
        f = m / (RA_BINS - 1)
        return {"ShearX": 0.3 * f, "ShearY": 0.3 * f, "TranslateX": 150.0 / 331.0 * self.size * f,
                "TranslateY": 150.0 / 331.0 * self.size * f, "Rotate": 30.0 * f, "enhance": 0.9 * f,
                "Posterize": int(8 - round(m / ((RA_BINS - 1) / 4))), "Solarize": 255.0 * (1.0 - f)}

    def randaugment(self, x, spec):
        """RandAugment on ``x`` ``[B, 3, S, S]`` (whole numbers in 0..255), ops in their sampled order."""
        mags = self.ra_magnitudes(spec.ra_magnitude)
        b = x.shape[0]
        for _ in range(spec.ra_ops):
            op = torch.floor(self._rand(b) * len(RA_OPS)).clamp_max(len(RA_OPS) - 1)
            sign = torch.where(self._rand(b) < 0.5, -1.0, 1.0)
            x = self._geometric(x, op, sign, mags)
            x = self._colour(x, op, sign, mags)
        return x

    def _geometric(self, x, op, sign, mags):
        """Shear / translate / rotate (nearest, black fill); identity for the other samples."""
        b, s = x.shape[0], self.size
        shear_x = torch.where(op == _OP["ShearX"], sign * mags["ShearX"], 0.0)
        shear_y = torch.where(op == _OP["ShearY"], sign * mags["ShearY"], 0.0)
        tx = torch.where(op == _OP["TranslateX"], torch.trunc(sign * mags["TranslateX"]), 0.0)
        ty = torch.where(op == _OP["TranslateY"], torch.trunc(sign * mags["TranslateY"]), 0.0)
        angle = torch.where(op == _OP["Rotate"], sign * math.radians(mags["Rotate"]), 0.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        c = s / 2.0
        # Inverse maps output pixel -> input pixel: shear about the top-left corner (torchvision), rotation
        # about the centre; at most one of these is active per sample.
        a11, a12 = cos, -sin + shear_x
        a21, a22 = sin + shear_y, cos
        t1 = c - cos * c + sin * c - tx
        t2 = c - sin * c - cos * c - ty
        pix = torch.arange(s, device=x.device, dtype=torch.float32) + 0.5
        px, py = pix.view(1, 1, s), pix.view(1, s, 1)
        xin = a11.view(b, 1, 1) * px + a12.view(b, 1, 1) * py + t1.view(b, 1, 1)
        yin = a21.view(b, 1, 1) * px + a22.view(b, 1, 1) * py + t2.view(b, 1, 1)
        grid = torch.stack((2.0 * xin / s - 1.0, 2.0 * yin / s - 1.0), dim=-1)
        return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)

    def _colour(self, x, op, sign, mags):
        """PIL's colour ops, each applied to the samples that drew it (the rest pass through)."""
        b = x.shape[0]

        def pick(name):
            return (op == _OP[name]).view(b, 1, 1, 1)

        # ImageEnhance: blend with a degenerate image, factor 1 + signed magnitude.
        gray = torch.round(0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        mean = torch.round(gray.mean(dim=(2, 3), keepdim=True))
        blur = x.clone()
        blur[:, :, 1:-1, 1:-1] = torch.round(F.conv2d(x, self._smooth.to(x.device), groups=3))  # PIL keeps the border
        degenerate = torch.where(pick("Color"), gray, torch.where(pick("Contrast"), mean, blur))
        degenerate = torch.where(pick("Brightness"), torch.zeros_like(x), degenerate)
        blend = pick("Brightness") | pick("Color") | pick("Contrast") | pick("Sharpness")
        factor = (1.0 + sign * mags["enhance"]).view(b, 1, 1, 1)
        x = torch.where(blend, torch.round(degenerate + factor * (x - degenerate)).clamp(0.0, 255.0), x)

        step = float(2 ** (8 - mags["Posterize"]))
        x = torch.where(pick("Posterize"), torch.floor(x / step) * step, x)
        x = torch.where(pick("Solarize") & (x >= mags["Solarize"]), 255.0 - x, x)

        lo, hi = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
        stretched = torch.floor((x - lo) * (255.0 / (hi - lo).clamp_min(1.0))).clamp(0.0, 255.0)
        x = torch.where(pick("AutoContrast") & (hi > lo), stretched, x)
        return torch.where(pick("Equalize"), equalize(x), x)


def equalize(x):
    """PIL's ``ImageOps.equalize`` per image and channel of ``x`` ``[B, C, H, W]`` (whole numbers 0..255)."""
    b, c, h, w = x.shape
    idx = x.reshape(b * c, h * w).long().clamp(0, 255)
    hist = torch.zeros(b * c, 256, device=x.device).scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float32))
    present = hist > 0
    last = 255 - present.flip(1).to(torch.uint8).argmax(1, keepdim=True)
    step = torch.floor((h * w - hist.gather(1, last)) / 255.0)
    before = torch.cumsum(hist, 1) - hist  # pixels below each level
    lut = torch.floor((torch.floor(step / 2.0) + before) / step.clamp_min(1.0)).clamp(max=255.0)
    keep = (present.sum(1, keepdim=True) <= 1) | (step == 0)
    lut = torch.where(keep, torch.arange(256, device=x.device, dtype=torch.float32).expand(b * c, 256), lut)
    return lut.gather(1, idx).view(b, c, h, w)


# ---------------------------------------------------------------------------- loader
class DeviceViewLoader:
    """Wraps a DataLoader of cached uint8 canvases (``datasets.decoded_cache.collate_canvas``): yields
    the same batches with ``canvas``/``sizes`` replaced by the views of ``specs`` made on the device,
    under the batch keys the CPU path uses (``img``, ``img2``, ...). On CUDA every tensor of the batch
    (labels too) is on the device, and the next batch's copy runs on a side stream while the current
    batch is being used. ``reseed``: every pass starts the view maker's stream afresh (evaluation loaders:
    the same test-time crops at every evaluation)."""

    def __init__(self, loader, views, specs, reseed=False):
        self.loader = loader
        self.views = views
        self.specs = list(specs)
        self.reseed = reseed

    def __len__(self):
        return len(self.loader)

    @property
    def dataset(self):
        return self.loader.dataset

    @property
    def sampler(self):
        return self.loader.sampler

    @property
    def batch_size(self):
        return self.loader.batch_size

    def _finish(self, batch, canvas, sizes):
        batch.update(self.views(canvas, sizes, self.specs))
        return batch

    def __iter__(self):
        if self.reseed:
            self.views.reseed()
        device = self.views.device
        if device.type != "cuda":
            for batch in self.loader:
                yield self._finish(batch, batch.pop("canvas"), batch.pop("sizes"))
            return
        copy_stream = torch.cuda.Stream(device)

        def upload(batch):
            # Every tensor goes over asynchronously from pinned memory: a plain .to(device) of the labels in
            # the step would be a blocking copy, i.e. a host sync per step.
            if batch is None:
                return None
            with torch.cuda.stream(copy_stream):
                moved = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            return moved

        batches = iter(self.loader)
        pending = upload(next(batches, None))
        while pending is not None:
            batch = pending
            current = torch.cuda.current_stream(device)
            current.wait_stream(copy_stream)
            for value in batch.values():
                if torch.is_tensor(value):
                    value.record_stream(current)
            pending = upload(next(batches, None))
            yield self._finish(batch, batch.pop("canvas"), batch.pop("sizes"))
