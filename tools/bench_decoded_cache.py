"""What checking the decoded-image cache costs: open a disk cache with and without its chunk checksums.

    python -m tools.bench_decoded_cache [--images 2000] [--side 256] [--rounds 5] [--dir DIR]

Writes ``--images`` synthetic 500x375 JPEG files, decodes them once into a disk cache (shorter side
``--side``), then opens the cache ``--rounds`` times with verification (what every run does) and
without it (``verify=False``, only for this measurement), and prints the best time of each. The data
file is in the page cache after the build, so this is the warm-cache cost: the CRC-32 pass itself.
A cold open also reads the file from disk once, which the first epoch would otherwise do.
"""
import argparse
import contextlib
import io
import os
import os.path as osp
import shutil
import sys
import tempfile
import time

import numpy as np

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)


def write_jpegs(folder, n):
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500]
    base = np.stack([128 + 100 * np.sin(xx / 17.0), 128 + 100 * np.cos(yy / 13.0),
                     128 + 60 * np.sin((xx + yy) / 29.0)], -1)
    paths = []
    for i in range(n):
        img = (base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
        paths.append(osp.join(folder, "{}.jpg".format(i)))
        Image.fromarray(img).save(paths[-1], quality=90)
    return paths


def best_open(paths, side, folder, verify, rounds):
    from fairclip.datasets.decoded_cache import open_decoded_cache

    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        open_decoded_cache(paths, side, "disk", folder, verify=verify)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=0, help="decoding processes for the build")
    parser.add_argument("--dir", default="", help="work folder (default: a temporary one, removed afterwards)")
    args = parser.parse_args(argv)
    from fairclip.datasets.decoded_cache import open_decoded_cache

    work = args.dir or tempfile.mkdtemp(prefix="bench-decoded-cache-")
    try:
        os.makedirs(osp.join(work, "jpeg"), exist_ok=True)
        paths = write_jpegs(osp.join(work, "jpeg"), args.images)
        folder = osp.join(work, "cache")
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            cache = open_decoded_cache(paths, args.side, "disk", folder, workers=args.workers)
        build = time.perf_counter() - start
        mib = cache.nbytes / 2 ** 20
        plain = best_open(paths, args.side, folder, False, args.rounds)
        checked = best_open(paths, args.side, folder, True, args.rounds)
        print("{} images, cache {:.0f} MiB, built in {:.1f} s".format(args.images, mib, build))
        print("open without checksums: {:.3f} s".format(plain))
        print("open with checksums:    {:.3f} s (+{:.3f} s, {:.0f} MiB/s)".format(
            checked, checked - plain, mib / max(checked - plain, 1e-9)))
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
