"""Decode-once image cache for the GPU-side views (docs/speed.md).

Every image of a split is decoded once (``datasets.common.open_rgb``, as the PIL path decodes it),
shrunk so that its shorter side is at most ``side`` pixels (never enlarged) and kept as uint8 RGB
(H, W, 3):

* ``memory``: in this process (forked DataLoader workers share the pages), rebuilt by every run;
* ``disk``: one flat file read through a memory map, reused by later runs (other seeds, methods).
  An index JSON beside it holds each image's offset and shape and a CRC-32 of every ``CHUNK_BYTES``
  chunk of the data file; it is written last, so its presence means the data file is complete.
  Opening the cache verifies every chunk (docs/speed.md gives the cost): a data file changed after it
  was written (disk fault, another program) is a one-line error naming it, never silently wrong
  pixels. Concurrent builders of the same cache wait on a lock file.

The key is the split's ordered file list and ``side`` (not the files' contents: delete the cache
folder after editing images in place). Unreadable train images are recorded and, when read, replaced
by the next readable one, as ``datasets.common.SkipUnreadableWrapper`` does; more of them than
``DATASET.MAX_UNREADABLE`` allows is an error. In a val/test split an unreadable image is always an
error (the evaluation set is never changed silently).
"""
import fcntl
import functools
import hashlib
import json
import os
import os.path as osp
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from fairclip.toolbox.errors import UserError
from fairclip.toolbox.io import atomic_file, atomic_write_json

from .common import UNREADABLE_ERRORS, open_rgb, unreadable_eval_message

FORMAT_VERSION = 2  # 2: per-chunk CRC-32 in the index
CHUNK_BYTES = 4 << 20
MODES = ("memory", "disk")


def default_cache_dir():
    root = os.environ.get("FAIRCLIP_CACHE") or osp.expanduser("~/.cache/fairclip")
    return osp.join(root, "decoded")


def decode_resized(path, side):
    """``uint8 [H, W, 3]`` of ``path`` with the shorter side shrunk to ``side`` (bicubic, antialiased)."""
    img = open_rgb(path, draft_side=side)  # JPEG: decode at a reduced DCT scale that still covers ``side``
    w, h = img.size
    if min(w, h) > side:
        scale = side / min(w, h)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


class _DecodeJobs(torch.utils.data.Dataset):
    """One decoded image per item, for a DataLoader that spreads decoding over worker processes."""

    def __init__(self, paths, side):
        self.paths = paths
        self.side = side

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return i, decode_resized(self.paths[i], self.side), ""
        except UNREADABLE_ERRORS as exc:  # FileNotFoundError is an OSError: reported the same way
            return i, None, "{}: {}".format(type(exc).__name__, exc)


def _as_is(item):
    return item


def _decode_all(paths, side, workers):
    """Yield ``(i, array or None, reason)`` in file-list order."""
    jobs = _DecodeJobs(paths, side)
    if workers <= 0:
        for i in range(len(jobs)):
            yield jobs[i]
        return
    loader = torch.utils.data.DataLoader(jobs, batch_size=None, num_workers=workers, collate_fn=_as_is,
                                         prefetch_factor=8)
    yield from loader


class DecodedCache:
    """Decoded uint8 images of one file list; ``image(i)`` is an ``[H, W, 3]`` array (a view, no copy)."""

    def __init__(self, paths, side, shapes, unreadable, arrays=None, data=None, offsets=None, location="memory"):
        self.paths = list(paths)
        self.side = int(side)
        self.shapes = np.asarray(shapes, dtype=np.int64).reshape(-1, 2)
        self.unreadable = dict(unreadable)  # index -> reason
        self._arrays = arrays
        self._data = data
        self._offsets = None if offsets is None else np.asarray(offsets, dtype=np.int64)
        self.location = location  # "memory" or the data file's path

    def __len__(self):
        return len(self.paths)

    def image(self, i):
        if i in self.unreadable:
            raise IndexError("image {} ({}) is unreadable".format(i, self.paths[i]))
        if self._arrays is not None:
            return self._arrays[i]
        h, w = self.shapes[i]
        start = self._offsets[i]
        return self._data[start:start + h * w * 3].reshape(h, w, 3)

    @property
    def nbytes(self):
        return int((self.shapes[:, 0] * self.shapes[:, 1]).sum() * 3)


def cache_key(paths, side):
    h = hashlib.sha256(json.dumps([FORMAT_VERSION, int(side), list(paths)]).encode())
    return h.hexdigest()[:16]


def _check_unreadable(unreadable, paths, max_fraction, label, eval_split=None):
    n = len(paths)
    if eval_split and unreadable:
        i = min(unreadable)
        reason = unreadable[i]  # "<path> (<reason>)"
        if reason.startswith(paths[i] + " (") and reason.endswith(")"):
            reason = reason[len(paths[i]) + 2:-1]
        raise UserError("{}: {}".format(label or "decoded cache", unreadable_eval_message(eval_split, paths[i], reason)))
    for i, reason in sorted(unreadable.items())[:20]:
        warnings.warn("cannot decode image {} ({}); using another sample instead".format(i, reason))
    if len(unreadable) > max_fraction * n or len(unreadable) == n:
        first = sorted(unreadable.items())[0][1]
        raise UserError(
            "{}: {} of {} images cannot be decoded, more than DATASET.MAX_UNREADABLE = {} allows (first: {}); "
            "re-download them (python -m tools.verify_datasets --decode lists all) or raise "
            "DATASET.MAX_UNREADABLE".format(label or "decoded cache", len(unreadable), n, max_fraction, first))


def _build_in_memory(paths, side, workers):
    arrays, shapes, unreadable = [None] * len(paths), [], {}
    for i, arr, reason in _decode_all(paths, side, workers):
        if arr is None:
            unreadable[i] = "{} ({})".format(paths[i], reason)
            shapes.append((0, 0))
        else:
            arr = np.asarray(arr)
            arrays[i] = arr
            shapes.append(arr.shape[:2])
    return DecodedCache(paths, side, shapes, unreadable, arrays=arrays)


class ChunkChecksums:
    """CRC-32 of each ``chunk`` bytes of a stream written in pieces of any size."""

    def __init__(self, chunk=CHUNK_BYTES):
        self.chunk, self.sums, self._crc, self._filled = int(chunk), [], 0, 0

    def update(self, data):
        view = memoryview(data).cast("B")
        while len(view):
            take = min(len(view), self.chunk - self._filled)
            self._crc = zlib.crc32(view[:take], self._crc)
            self._filled += take
            view = view[take:]
            if self._filled == self.chunk:
                self._close()

    def _close(self):
        self.sums.append(self._crc)
        self._crc, self._filled = 0, 0

    def finish(self):
        if self._filled:
            self._close()
        return self.sums


def chunk_checksums(data, chunk=CHUNK_BYTES, threads=4):
    """CRC-32 of each ``chunk`` bytes of ``data`` (a uint8 array or memory map); zlib releases the GIL on
    large buffers, so chunks are checked on several threads."""
    view = memoryview(np.ascontiguousarray(data)).cast("B") if len(data) else memoryview(b"")
    starts = range(0, len(view), chunk)
    if threads <= 1 or len(starts) < 2:
        return [zlib.crc32(view[s:s + chunk]) for s in starts]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(lambda s: zlib.crc32(view[s:s + chunk]), starts))


def _build_on_disk(paths, side, workers, data_path, index_path):
    shapes, offsets, unreadable, offset = [], [], {}, 0
    sums = ChunkChecksums()
    with atomic_file(data_path, "wb") as f:
        for i, arr, reason in _decode_all(paths, side, workers):
            offsets.append(offset)
            if arr is None:
                unreadable[i] = "{} ({})".format(paths[i], reason)
                shapes.append((0, 0))
                continue
            arr = np.ascontiguousarray(np.asarray(arr, dtype=np.uint8))
            f.write(arr.data)
            sums.update(arr.data)
            shapes.append(arr.shape[:2])
            offset += arr.nbytes
    index = {"version": FORMAT_VERSION, "side": int(side), "count": len(paths), "nbytes": offset,
             "paths": list(paths), "shapes": [list(map(int, s)) for s in shapes], "offsets": offsets,
             "unreadable": {str(k): v for k, v in unreadable.items()},
             "chunk_bytes": CHUNK_BYTES, "crc32": sums.finish()}
    atomic_write_json(index, index_path, indent=None)  # last: its presence marks a complete cache


def verify_checksums(data, index, data_path, fix):
    """Every chunk of the data file has the CRC-32 its index recorded, else a one-line ``UserError``."""
    chunk, expected = index.get("chunk_bytes"), index.get("crc32")
    if not isinstance(chunk, int) or chunk < 1 or not isinstance(expected, list):
        raise UserError("decoded cache index for {} has no chunk checksums; {}".format(data_path, fix))
    found = chunk_checksums(data, chunk)
    bad = [i for i, (a, b) in enumerate(zip(found, expected)) if a != b]
    if bad or len(found) != len(expected):
        first = bad[0] if bad else min(len(found), len(expected))
        raise UserError("decoded cache data {} is corrupt ({} of {} chunks fail their checksum, first at byte {}); "
                        "{}".format(data_path, len(bad) or 1, len(expected), first * chunk, fix))


def _load_from_disk(paths, side, data_path, index_path, verify=True):
    fix = "delete {} and {} to rebuild it".format(index_path, data_path)
    try:
        with open(index_path) as f:
            index = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError("decoded cache index {} cannot be read ({}); {}".format(index_path, exc, fix)) from exc
    if index.get("version") != FORMAT_VERSION or index.get("side") != side or index.get("paths") != list(paths):
        raise UserError("decoded cache {} was written for another file list, side or format; {}".format(
            index_path, fix))
    size = osp.getsize(data_path) if osp.isfile(data_path) else -1
    if size != index["nbytes"]:
        raise UserError("decoded cache data {} has {} bytes, its index says {}; {}".format(
            data_path, size, index["nbytes"], fix))
    data = np.memmap(data_path, dtype=np.uint8, mode="r") if size > 0 else np.zeros(0, dtype=np.uint8)
    if verify:
        verify_checksums(data, index, data_path, fix)
    unreadable = {int(k): v for k, v in index["unreadable"].items()}
    return DecodedCache(paths, side, index["shapes"], unreadable, data=data, offsets=index["offsets"],
                        location=data_path)


def open_decoded_cache(paths, side, mode="disk", cache_dir="", workers=0, max_unreadable=0.01, label="",
                       eval_split=None, verify=True):
    """The decoded cache of ``paths`` (built now if needed).

    ``mode``: ``memory`` or ``disk`` (``cache_dir`` or ``$FAIRCLIP_CACHE/decoded``); ``workers``: decoding
    processes; ``label`` names the split in messages (e.g. ``"OxfordPets train"``); ``eval_split``: "val" or
    "test" when ``paths`` is an evaluation split (any unreadable image is then an error); ``verify``: check
    the chunk checksums of a disk cache (only ``tools/benchmark.py`` turns it off, to measure the cost).
    """
    if mode not in MODES:
        raise UserError("DATALOADER.DECODED_CACHE={!r} is not one of {}".format(mode, ", ".join(MODES)))
    side = int(side)
    if side < 1:
        raise UserError("DATALOADER.DECODED_CACHE_SIDE={} must be a positive number of pixels".format(side))
    paths = [str(p) for p in paths]
    if not paths:
        raise UserError("{}: no images to cache (the split is empty)".format(label or "decoded cache"))
    if mode == "memory":
        cache = _build_in_memory(paths, side, workers)
    else:
        folder = osp.abspath(osp.expanduser(cache_dir or default_cache_dir()))
        stem = osp.join(folder, "s{}-{}".format(side, cache_key(paths, side)))
        data_path, index_path = stem + ".u8", stem + ".json"
        try:
            os.makedirs(folder, exist_ok=True)
            lock = open(stem + ".lock", "a")
        except OSError as exc:
            raise UserError("cannot write the decoded-image cache folder {} ({}); set DATALOADER.DECODED_CACHE_DIR "
                            "to a writable folder or DATALOADER.DECODED_CACHE memory".format(folder, exc)) from exc
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per cache; the others wait, then read its result
            if not osp.isfile(index_path):
                print("Decoding {} images once into {} (shorter side <= {})".format(len(paths), data_path, side))
                _build_on_disk(paths, side, workers, data_path, index_path)
        cache = _load_from_disk(paths, side, data_path, index_path, verify=verify)
    _check_unreadable(cache.unreadable, paths, max_unreadable, label, eval_split)
    return cache


# ---------------------------------------------------------------------------- loading batches
class CachedImages(torch.utils.data.Dataset):
    """The items of a split (``Datum`` list) as cached uint8 images; unreadable ones are replaced by the
    next readable item. Items: ``img`` (array [H, W, 3]), ``label``, ``domain``, ``impath``, ``index``."""

    def __init__(self, data_source, cache):
        if len(data_source) != len(cache):
            raise ValueError("data source and cache differ in length")
        self.data_source = data_source
        self.cache = cache
        n = len(cache)
        readable = [i for i in range(n) if i not in cache.unreadable]
        self._source_of = list(range(n))
        for i in sorted(cache.unreadable):  # next readable item, cyclically
            later = [j for j in readable if j > i]
            self._source_of[i] = later[0] if later else readable[0]

    def __len__(self):
        return len(self.data_source)

    def __getitem__(self, idx):
        j = self._source_of[idx]
        item = self.data_source[j]
        return {"img": self.cache.image(j), "label": item.label, "domain": item.domain, "impath": item.impath,
                "index": idx}


def central_square(img):
    """The centred min(H, W) square of ``img`` (what a resize + centre crop keeps; offsets rounded as
    torchvision's CenterCrop rounds them)."""
    h, w = img.shape[:2]
    m = min(h, w)
    top, left = int(round((h - m) / 2.0)), int(round((w - m) / 2.0))
    return img[top:top + m, left:left + m]


def canvas_shape(imgs):
    """``(sizes [B, 2], hmax, wmax)`` of a batch of ``[H, W, 3]`` arrays."""
    sizes = np.array([img.shape[:2] for img in imgs], dtype=np.int64).reshape(-1, 2)
    hmax, wmax = sizes.max(0)
    return sizes, int(hmax), int(wmax)


def fill_canvas(canvas, imgs, edge=2):
    """Copy ``imgs`` into ``canvas`` (uint8 ``[B, Hmax, Wmax, 3]``, any prior content): each image at the
    top left, ``edge`` rows/columns past it repeating its last row/column (a cubic filter at the border
    then never reads padding), zeros elsewhere only where the image is smaller than the canvas."""
    hmax, wmax = canvas.shape[1:3]
    for b, img in enumerate(imgs):
        h, w = img.shape[:2]
        canvas[b, :h, :w] = img
        if h < hmax or w < wmax:
            canvas[b, h:, :] = 0
            canvas[b, :h, w:] = 0
            if edge:
                canvas[b, :h, w:w + edge] = img[:, -1:]
                canvas[b, h:h + edge, :min(w + edge, wmax)] = canvas[b, h - 1:h, :min(w + edge, wmax)]


def collate_canvas(items, edge=2, center_square=False):
    """Batch variable-size images into one zero-padded ``canvas`` (uint8 ``[B, Hmax, Wmax, 3]``) with
    ``sizes`` (``[B, 2]``: h, w). ``edge`` pixels past each image repeat its last row/column so that a
    cubic filter at the border never reads padding. ``center_square`` keeps only each image's central
    square (enough for the centre view; smaller batches, no padding)."""
    imgs = [central_square(it["img"]) if center_square else it["img"] for it in items]
    sizes, hmax, wmax = canvas_shape(imgs)
    canvas = np.empty((len(items), hmax, wmax, 3), dtype=np.uint8)
    fill_canvas(canvas, imgs, edge)
    return dict(canvas=torch.from_numpy(canvas), sizes=torch.from_numpy(sizes), **item_fields(items))


def item_fields(items):
    """The keys of a canvas batch besides ``canvas`` and ``sizes``: label, domain, impath, index."""
    return {
        "label": torch.tensor([it["label"] for it in items], dtype=torch.long),
        "domain": torch.tensor([it["domain"] for it in items], dtype=torch.long),
        "impath": [it["impath"] for it in items],
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
    }


def canvas_loader(dataset, batch_size, train, workers, pin_memory, center_square=False, prefetch_factor=None,
                  seed=None):
    """A DataLoader of ``collate_canvas`` batches over ``dataset`` (a ``CachedImages``): shuffled with full
    batches for training, in order for evaluation; worker processes persist across epochs.
    ``prefetch_factor``: batches each worker prepares ahead (None: PyTorch's default). ``seed``: the shuffle
    and the workers' base seed come from two generators of their own (seeded ``seed`` and ``seed + 1``),
    never from the global one: with persistent workers the global stream would be drawn from only when the
    workers start, which a resumed run does at another epoch (``trainers._checkpoints`` saves both)."""
    extra = {"prefetch_factor": prefetch_factor} if workers > 0 and prefetch_factor else {}
    shuffle_gen = loader_gen = None
    if seed is not None:
        shuffle_gen = torch.Generator().manual_seed(int(seed))
        loader_gen = torch.Generator().manual_seed(int(seed) + 1)
    sampler = (torch.utils.data.RandomSampler(dataset, generator=shuffle_gen) if train
               else torch.utils.data.SequentialSampler(dataset))
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler,
        num_workers=workers, collate_fn=functools.partial(collate_canvas, center_square=center_square),
        pin_memory=pin_memory, drop_last=train and len(dataset) >= batch_size, persistent_workers=workers > 0,
        generator=loader_gen, **extra)
