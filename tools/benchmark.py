"""Speed benchmark: zero-shot evaluation, a MUST-style step and the FAIR step, side by side (docs/speed.md).

    python -m tools.benchmark --device cuda --precision bf16 --batch 256 --out DIR
    python -m tools.benchmark --device cpu --out DIR            # tiny and full-size ViT-B/32, small batch

Timed per model (images/s, ms per step, peak memory):
  decode_once     JPEG files -> the uint8 cache (CPU worker processes; once per dataset split)
  pil_views       FAIR's 10 views per image with the CPU/PIL reference transforms, one process
  gpu_views       FAIR's views made on the device from one cached uint8 batch
  zeroshot        ZeroshotCLIP.evaluate(): cache -> loader -> centre view on the device -> logits (on CUDA the
                  trainers' loader: threads gathering into pinned buffers)
  zeroshot_workers the same through DataLoader worker processes (CUDA only; the path before the threads)
  zeroshot_model  the same forward on views already on the device (the compute ceiling)
  must_step       MUST.forward_backward fed by the cache loader with weak + strong views on the device
  must_model      the same step on views already on the device
  must_encoders   its encoder work alone: no-grad forward of B images, forward + backward of B images
  fair_step       FAIR.forward_backward fed by its own cache loader (weak, strong, N crops on the device)
  fair_model      the same step on views already on the device
  fair_encoders   its encoder work alone: no-grad forward of B x (1 + N) images, forward + backward of B
FAIR's non-encoder overhead = fair_model / fair_encoders - 1 (target <= 15%); fair_step / fair_encoders - 1
adds the data path. The trainers are the real ones, built on a miniature Oxford Pets tree (for their class
texts) and fed synthetic images decoded once into an in-memory uint8 cache. Weights are random unless
--weights names a CLIP file (speed does not depend on them). Writes DIR/benchmark.json and DIR/benchmark.md.
"""
import argparse
import contextlib
import io
import os
import os.path as osp
import platform
import resource
import sys
import tempfile
import time
import types

import numpy as np
import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

from fairclip.toolbox.errors import UserError, report_error  # noqa: E402
from fairclip.toolbox.io import atomic_write_json, atomic_write_text  # noqa: E402

MODELS = ("tiny", "vit-b32", "vit-b16", "vit-l14", "rn50")
# random weights of the real architectures (tools/backbone_cost.py); the backbone configs' input size is 224 for all
ARCHITECTURE_OF = {"vit-b32": "ViT-B/32", "vit-b16": "ViT-B/16", "vit-l14": "ViT-L/14", "rn50": "RN50"}
WORKLOADS = ("decode_once", "pil_views", "gpu_views", "zeroshot", "zeroshot_workers", "zeroshot_model", "must_step", "must_model",
             "must_encoders", "fair_step", "fair_model", "fair_encoders")
TRAINER_NODES = {"ZeroshotCLIP": "ZSCLIP", "MUST": "MUST", "FAIR": "FAIR"}


# ---------------------------------------------------------------------------- setup
def hardware(device):
    info = {"torch": torch.__version__, "python": platform.python_version(), "cpu": platform.processor() or
            platform.machine(), "cpu_cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu"] = names[0]
    except OSError:
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                    cuda=torch.version.cuda)
    return info


def clip_file(model, folder, weights):
    """A CLIP weights file: --weights, else random weights of the model's architecture."""
    if weights:
        return weights
    path = osp.join(folder, "{}_random.pt".format(model))
    if model == "tiny":
        from fairclip.tools.make_tiny_clip import save_tiny_clip

        return save_tiny_clip(path, "state_dict")
    from fairclip.tools.backbone_cost import build as build_clip

    model = build_clip(ARCHITECTURE_OF[model], seed=0)
    torch.save({k: v.half() for k, v in model.state_dict().items()}, path)  # half the file; loaded as fp32
    return path


def build(name, args, tree, weights, out):
    """A real trainer (``name``) on the miniature tree; its own loaders are replaced by the benchmark's."""
    from fairclip.toolbox import build_trainer, set_random_seed
    from train import build_parser, setup_cfg

    argv = ["--root", tree, "--trainer", name, "--seed", "1", "--output-dir", osp.join(out, name),
            "--dataset-config-file", osp.join(REPO, "configs/datasets/oxford_pets.yaml"),
            "--config-file", osp.join(REPO, "configs/trainers/{}/vit_b32.yaml".format(name)),
            "MODEL.BACKBONE.PATH", weights, "MODEL.TEXT_CACHE_DIR", osp.join(out, "text"),
            "DATALOADER.NUM_WORKERS", "0", "DATALOADER.GPU_VIEWS", "never", "VERBOSE", "False",
            "DATALOADER.TRAIN_X.BATCH_SIZE", str(args.batch), "DATALOADER.TEST.BATCH_SIZE", str(args.eval_batch),
            "USE_CUDA", str(args.device == "cuda"), "TRAINER.COMPILE", str(args.compile),
            "TRAINER.{}.PREC".format(TRAINER_NODES[name]), args.precision]
    cfg = setup_cfg(build_parser().parse_args(argv))
    set_random_seed(1)
    with contextlib.redirect_stdout(io.StringIO()):
        trainer = build_trainer(cfg)
    trainer.epoch, trainer.batch_idx, trainer.num_batches, trainer.max_epoch = 0, 0, 1000, 1
    return trainer


def synthetic_cache(n_items, side, num_classes, distinct=256, seed=0):
    """``(items, DecodedCache)``: ``n_items`` uint8 images with the shorter side ``side`` and mixed
    aspect ratios (``distinct`` different arrays reused), labels cycling over the classes."""
    from fairclip.datasets.decoded_cache import DecodedCache

    rng = np.random.default_rng(seed)
    shapes = [(side, int(side * 4 / 3)), (int(side * 4 / 3), side), (side, int(side * 3 / 2)), (side, side)]
    pool = [rng.integers(0, 256, size=shapes[i % len(shapes)] + (3,), dtype=np.uint8) for i in range(distinct)]
    arrays = [pool[i % distinct] for i in range(n_items)]
    items = [types.SimpleNamespace(impath="synthetic/{}.jpg".format(i), label=i % num_classes, domain=0)
             for i in range(n_items)]
    cache = DecodedCache([it.impath for it in items], side, [a.shape[:2] for a in arrays], {}, arrays=arrays)
    return items, cache


def cached_loader(items, cache, batch, workers, device, train, center_square=False):
    """The trainers' loader over ``cache`` (``ClipTrainer.cached_loader``), with 4 batches prefetched per
    worker (the trainers use PyTorch's default, 2)."""
    from fairclip.datasets.decoded_cache import CachedImages, canvas_loader

    return canvas_loader(CachedImages(items, cache), batch, train, workers, pin_memory=device.type == "cuda",
                         center_square=center_square, prefetch_factor=4)


def forever(loader):
    while True:
        yield from loader


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # process peak so far (Linux: KiB)


def timed(step, inputs, images_per_step, args, device):
    """Run ``step(next(inputs))`` ``warmup`` times, then ``rounds`` timed rounds of ``steps`` calls
    (synchronised); the best round counts (robust to other load on a shared machine)."""
    for _ in range(args.warmup):
        step(next(inputs))
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    best = float("inf")
    for _ in range(args.rounds):
        start = time.perf_counter()
        for _ in range(args.steps):
            step(next(inputs))
        sync(device)
        best = min(best, time.perf_counter() - start)
    return {"images_per_s": args.steps * images_per_step / best, "ms_per_step": 1000.0 * best / args.steps,
            "images_per_step": images_per_step, "peak_mem_mib": peak_mib(device)}


def repeat(x):
    while True:
        yield x


# ---------------------------------------------------------------------------- workloads
def bench_decode(args, folder):
    from PIL import Image

    from fairclip.datasets.decoded_cache import open_decoded_cache

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500]
    base = np.stack([128 + 100 * np.sin(xx / 17.0), 128 + 100 * np.cos(yy / 13.0), 128 + 60 * np.sin((xx + yy) / 29.0)], -1)
    paths = []
    os.makedirs(osp.join(folder, "jpeg"), exist_ok=True)
    for i in range(args.decode_images):
        img = (base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
        paths.append(osp.join(folder, "jpeg", "{}.jpg".format(i)))
        Image.fromarray(img).save(paths[-1], quality=90)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        open_decoded_cache(paths, 256, "memory", workers=args.workers)
    elapsed = time.perf_counter() - start
    return {"images_per_s": len(paths) / elapsed, "ms_per_step": None, "images_per_step": len(paths),
            "peak_mem_mib": None, "data": "500x375 JPEG files, {} workers".format(args.workers)}


def bench_pil_views(args, trainer):
    from PIL import Image

    tfms = trainer.custom_train_transform()
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 256, size=(256, 341, 3), dtype=np.uint8)) for _ in range(8)]
    n = args.pil_images
    start = time.perf_counter()
    for i in range(n):
        for tfm in tfms:
            tfm(imgs[i % len(imgs)])
    elapsed = time.perf_counter() - start
    return {"images_per_s": n / elapsed, "ms_per_step": None, "images_per_step": n, "peak_mem_mib": None,
            "data": "PIL images in memory, 1 process"}


def bench_zeroshot(args, trainer, device, workloads):
    from fairclip.datasets.decoded_cache import CachedImages
    from fairclip.trainers._gpu_views import DeviceViewLoader, GpuViews, center_view
    from fairclip.trainers._pinned_loader import PinnedCenterLoader, use_pinned_center_loader

    rows = {}
    side = max(trainer.cfg.INPUT.SIZE)  # test splits are cached at the input size, batched as central squares
    items, cache = synthetic_cache(args.eval_batch * args.eval_batches, side, trainer.num_classes)
    views = GpuViews.from_cfg(trainer.cfg, device, seed=1)
    workers_loader = DeviceViewLoader(cached_loader(items, cache, args.eval_batch, args.workers, device, train=False,
                                                    center_square=True), views, [center_view()])
    workers_data = "uint8 cache in memory -> loader ({} worker processes) -> centre view on device".format(args.workers)
    # what ClipTrainer.build_gpu_view_loaders uses for centre-only evaluation
    if use_pinned_center_loader(device, args.workers):
        dataset = CachedImages(items, cache)
        threads = min(4, args.workers)
        loader = DeviceViewLoader(PinnedCenterLoader(dataset, range(len(dataset)), args.eval_batch, device,
                                                     threads=threads), views, [center_view()])
        data = "uint8 cache in memory -> {} threads -> pinned buffers -> centre view on device".format(threads)
    else:
        loader, data = workers_loader, workers_data

    def timed_eval(name, eval_loader, description):
        trainer.test_loader = eval_loader
        best = float("inf")
        with contextlib.redirect_stdout(io.StringIO()):
            for i in range(1 + args.rounds):  # the first pass starts the workers and warms the kernels
                sync(device)
                if i == 1 and device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                start = time.perf_counter()
                result = trainer.evaluate()  # ends with the predictions on the host: synchronised
                best = best if i == 0 else min(best, time.perf_counter() - start)
        rows[name] = {"images_per_s": result["n_images"] / best, "ms_per_step": 1000.0 * best / len(eval_loader),
                      "images_per_step": args.eval_batch, "peak_mem_mib": peak_mib(device), "data": description}

    if "zeroshot" in workloads:
        timed_eval("zeroshot", loader, data)
    if "zeroshot_workers" in workloads and loader is not workers_loader:
        timed_eval("zeroshot_workers", workers_loader, workers_data)
    if "zeroshot_model" in workloads:
        fixed = next(iter(loader))["img"]

        def infer(images):
            with torch.no_grad():
                trainer.model_inference(images).argmax(1)

        rows["zeroshot_model"] = dict(timed(infer, repeat(fixed), args.eval_batch, args, device),
                                      data="views already on the device")
    return rows


def bench_steps(args, trainer, device, workloads, prefix, specs):
    """The step of ``trainer`` end to end, on fixed device views, and its encoder work alone."""
    from fairclip.trainers._gpu_views import DeviceViewLoader, GpuViews

    rows = {}
    n_items = max(64 * args.batch, 512)  # no loader epoch ends inside a timed run
    items, cache = synthetic_cache(n_items, args.cache_side, trainer.num_classes, seed=1)
    views = GpuViews.from_cfg(trainer.cfg, device, seed=1)
    loader = DeviceViewLoader(cached_loader(items, cache, args.batch, args.workers, device, train=True), views, specs)
    trainer.before_epoch()
    if prefix + "_step" in workloads:
        rows[prefix + "_step"] = dict(timed(trainer.forward_backward, forever(loader), args.batch, args, device),
                                      data="uint8 cache in memory -> loader ({} workers) -> views on device".format(args.workers))
    fixed = next(iter(loader))
    crops = fixed.get("img3")
    no_grad_input = fixed["img"] if crops is None else torch.cat([fixed["img"], crops.flatten(0, 1)])
    strong = fixed["img2"]

    def encoders(_):
        with torch.no_grad():
            trainer.encode_images(no_grad_input)
        trainer.encode_images(strong).sum().backward()  # gradients reach the visual LayerNorms

    model_row, enc_row = prefix + "_model", prefix + "_encoders"
    # The step and its encoders alone are timed in alternating rounds: on a shared machine both see the
    # same load, and their ratio (the overhead) is the median of the per-round ratios.
    ratios = []
    for r in range(args.rounds):
        once = argparse.Namespace(**dict(vars(args), rounds=1, warmup=args.warmup if r == 0 else 0))
        if model_row in workloads:
            result = timed(trainer.forward_backward, repeat(fixed), args.batch, once, device)
            if model_row not in rows or result["ms_per_step"] < rows[model_row]["ms_per_step"]:
                rows[model_row] = dict(result, data="views already on the device")
        if enc_row in workloads:
            result_enc = timed(encoders, repeat(None), args.batch, once, device)
            if enc_row not in rows or result_enc["ms_per_step"] < rows[enc_row]["ms_per_step"]:
                rows[enc_row] = dict(result_enc, data="views already on the device; encoders only")
            if model_row in workloads:
                ratios.append(result["ms_per_step"] / result_enc["ms_per_step"])
    if ratios:
        rows[model_row]["over_encoders_median"] = float(np.median(ratios)) - 1.0
    if prefix == "fair" and "gpu_views" in workloads:
        batch = next(iter(loader.loader))
        canvas, sizes = batch["canvas"].to(device), batch["sizes"].to(device)
        rows["gpu_views"] = dict(timed(lambda _: views(canvas, sizes, specs), repeat(None), args.batch, args, device),
                                 data="one uint8 batch on the device; weak + strong + {} crops".format(
                                     trainer.cfg.TRAINER.FAIR.N_CROPS))
    return rows


def bench_model(model, args, device, tree, folder, workloads):
    weights = clip_file(model, folder, args.weights)
    rows = {}
    runs = [("ZeroshotCLIP", ("zeroshot", "zeroshot_workers", "zeroshot_model")),
            ("MUST", ("must_step", "must_model", "must_encoders")),
            ("FAIR", ("pil_views", "gpu_views", "fair_step", "fair_model", "fair_encoders"))]
    for name, names in runs:
        if not set(names) & set(workloads):
            continue
        print("[{}] building {} ...".format(model, name), flush=True)
        trainer = build(name, args, tree, weights, folder)
        try:
            if name == "ZeroshotCLIP":
                rows.update(bench_zeroshot(args, trainer, device, workloads))
            elif name == "MUST":
                from fairclip.trainers._gpu_views import strong_view, weak_view

                c = trainer.cfg.TRAINER.MUST
                specs = [weak_view(), strong_view(c.STRONG_SCALE, c.RANDAUGMENT_M, c.RANDAUGMENT_N)]
                rows.update(bench_steps(args, trainer, device, workloads, "must", specs))
            else:
                if "pil_views" in workloads:
                    rows["pil_views"] = bench_pil_views(args, trainer)
                rows.update(bench_steps(args, trainer, device, workloads, "fair", trainer.gpu_train_views()))
        except Exception as exc:  # one broken trainer must not hide the others' numbers
            print("[{}] {} failed: {}: {}".format(model, name, type(exc).__name__, exc), flush=True)
            for w in names:
                rows.setdefault(w, {"error": "{}: {}".format(type(exc).__name__, str(exc)[:200])})
        del trainer
        if device.type == "cuda":
            torch.cuda.empty_cache()
        for w in names:
            if w in rows and "images_per_s" in rows[w]:
                print("[{}] {:<15} {:>10.1f} images/s".format(model, w, rows[w]["images_per_s"]), flush=True)
    return rows


# ---------------------------------------------------------------------------- report
def overheads(rows):
    """Step time over encoder time, minus 1 (the model-only figure: median of alternating rounds)."""
    out = {}
    for prefix in ("fair", "must"):
        enc = rows.get(prefix + "_encoders", {}).get("ms_per_step")
        model = rows.get(prefix + "_model", {})
        if "over_encoders_median" in model:
            out[prefix + "_model_over_encoders"] = model["over_encoders_median"]
        step = rows.get(prefix + "_step", {}).get("ms_per_step")
        if enc and step:
            out[prefix + "_step_over_encoders"] = step / enc - 1.0
    return out


def markdown(report):
    from tabulate import tabulate

    meta = report["meta"]
    hw = meta["hardware"]
    lines = [
        "# Speed benchmark",
        "",
        "* hardware: {}{}; {} CPU cores ({}); torch {}".format(
            hw.get("gpu", "no GPU"), " ({} GiB)".format(hw["gpu_memory_gib"]) if "gpu" in hw else "",
            hw["cpu_cores"], hw["cpu"], hw["torch"]),
        "* device {device}, precision {precision}, train batch {batch}, eval batch {eval_batch}, loader workers "
        "{workers}, torch.compile {compile}; best of {rounds} rounds of {steps} steps after {warmup} warm-up "
        "steps".format(**meta),
        "* data cached: yes: images decoded once to uint8 (train: shorter side {cache_side}; test: the input "
        "size, central squares), kept in memory; views made on the device".format(**meta),
        "* weights: {weights}".format(**meta),
        "",
    ]
    table = []
    for model, rows in report["results"].items():
        for workload in WORKLOADS:
            r = rows.get(workload)
            if r is None:
                continue
            if "error" in r:
                table.append([model, workload, "error", "", "", "", r["error"]])
                continue
            table.append([model, workload, "{:.1f}".format(r["images_per_s"]),
                          "" if r["ms_per_step"] is None else "{:.1f}".format(r["ms_per_step"]),
                          r["images_per_step"], "" if r["peak_mem_mib"] is None else "{:.0f}".format(r["peak_mem_mib"]),
                          r.get("data", "")])
    lines.append(tabulate(table, headers=["model", "workload", "images/s", "ms/step", "images/step",
                                          "peak MiB", "data"], tablefmt="pipe"))
    lines.append("")
    for model, ratios in report["overheads"].items():
        for key, value in ratios.items():
            lines.append("* {} {}: {:+.1%}".format(model, key.replace("_", " "), value))
    if meta["device"] == "cpu":
        lines.append("* peak MiB on CPU is the process's peak resident memory so far (not per workload)")
    return "\n".join(lines) + "\n"


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--precision", default=None, choices=["bf16", "fp32"], help="default: bf16 on cuda, fp32 on cpu")
    parser.add_argument("--batch", type=int, default=None, help="train batch (default 256 cuda, 8 cpu)")
    parser.add_argument("--eval-batch", type=int, default=None, help="zero-shot batch (default 1024 cuda, 16 cpu)")
    parser.add_argument("--eval-batches", type=int, default=None, help="zero-shot batches per pass (default 24 cuda, 3 cpu)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=None,
                        help="default: vit-b32 on cuda, tiny and vit-b32 on cpu (vit-b16, vit-l14, rn50: the other "
                        "backbone configs' architectures)")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20 cuda, 3 cpu)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 cuda, 1 cpu)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds, the best counts (default 2 cuda, 3 cpu)")
    parser.add_argument("--workers", type=int, default=None, help="loader/decode processes (default min(12, cores) cuda, 0 cpu)")
    parser.add_argument("--classes", type=int, default=None, help="classes of the text side (<= 37; default 37 cuda, 10 cpu)")
    parser.add_argument("--cache-side", type=int, default=256, help="shorter side of the cached train images")
    parser.add_argument("--decode-images", type=int, default=None, help="JPEGs decoded for decode_once (512 cuda, 64 cpu)")
    parser.add_argument("--pil-images", type=int, default=None, help="images for pil_views (64 cuda, 16 cpu)")
    parser.add_argument("--weights", default="", help="a CLIP weights file instead of random weights")
    parser.add_argument("--compile", action="store_true", help="torch.compile the image tower (TRAINER.COMPILE)")
    parser.add_argument("--out", required=True, help="folder for benchmark.json and benchmark.md")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    gpu = args.device == "cuda"
    if gpu and not torch.cuda.is_available():
        return report_error("--device cuda but no CUDA GPU is visible; use --device cpu")
    defaults = {"precision": "bf16" if gpu else "fp32", "batch": 256 if gpu else 8, "eval_batch": 1024 if gpu else 16,
                "eval_batches": 24 if gpu else 3, "models": ["vit-b32"] if gpu else ["tiny", "vit-b32"],
                "steps": 15 if gpu else 2, "warmup": 5 if gpu else 1, "rounds": 2 if gpu else 3,
                "workers": min(12, os.cpu_count() or 1) if gpu else 0,
                "classes": 37 if gpu else 10, "decode_images": 512 if gpu else 64, "pil_images": 64 if gpu else 16}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.compile:
        args.warmup = max(args.warmup, 3)  # compilation happens in the first calls of each shape
    if not 1 <= args.classes <= 37:
        return report_error("--classes must be between 1 and 37 (the Oxford Pets class texts)")
    os.environ.setdefault("TOOLBOX", "builtin")
    device = torch.device("cuda" if gpu else "cpu")
    if gpu:
        torch.backends.cudnn.benchmark = True
    meta = {"device": args.device, "precision": args.precision, "batch": args.batch, "eval_batch": args.eval_batch,
            "workers": args.workers, "compile": args.compile, "cache_side": args.cache_side,
            "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "classes": args.classes,
            "weights": args.weights or "random (same architecture; speed does not depend on weights)",
            "hardware": hardware(device), "command": " ".join(sys.argv)}
    print("Benchmark on {}: {}".format(meta["hardware"].get("gpu", "CPU"), {k: meta[k] for k in (
        "precision", "batch", "eval_batch", "workers", "compile")}), flush=True)
    report = {"meta": meta, "results": {}, "overheads": {}}
    try:
        with tempfile.TemporaryDirectory(prefix="fairclip-bench-") as folder:
            os.environ["FAIRCLIP_CACHE"] = osp.join(folder, "cache")
            from fairclip.tools.make_miniature_data import make_oxford_pets

            tree = osp.join(folder, "data")
            with contextlib.redirect_stdout(io.StringIO()):
                make_oxford_pets(tree, classes=args.classes, per_class=4, size=32)
            if "decode_once" in args.workloads:
                report["decode_once"] = bench_decode(args, folder)
                print("decode_once {:.1f} images/s".format(report["decode_once"]["images_per_s"]), flush=True)
            for model in args.models:
                rows = bench_model(model, args, device, tree, folder, args.workloads)
                if "decode_once" in report:
                    rows["decode_once"] = report["decode_once"]
                report["results"][model] = rows
                report["overheads"][model] = overheads(rows)
    except UserError as exc:
        return report_error(exc)
    report.pop("decode_once", None)
    os.makedirs(args.out, exist_ok=True)
    atomic_write_json(report, osp.join(args.out, "benchmark.json"))
    text = markdown(report)
    atomic_write_text(text, osp.join(args.out, "benchmark.md"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
