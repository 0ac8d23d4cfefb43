"""CoOp-style entry point: build the config, the trainer, then train and/or test.

    python train.py --root DATA --seed 1 --trainer FAIR \
        --dataset-config-file configs/datasets/stanford_cars.yaml \
        --config-file configs/trainers/FAIR/vit_b32.yaml \
        --output-dir output/stanford_cars/FAIR/vit_b32/seed1 [KEY VALUE ...]

Config merge order (as in CoOp): defaults + our keys (``fairclip.config.extend_cfg``), dataset YAML, method
YAML and its per-dataset override (``<method config dir>/per_dataset/<dataset>.yaml``, found automatically),
any --extra-config-file, command-line arguments, trailing KEY VALUE pairs. Unknown keys fail with a message
naming the key.

The output folder is locked for the run and remembers the run's training settings; rerunning the same
command resumes an interrupted run exactly, a different one is refused unless ``--fresh`` (docs/reliability.md).
Exit status: 0 done, 2 bad input or a failed write (one ``ERROR:`` line), 130 interrupted (Ctrl-C or SIGTERM;
the line says which epoch a rerun resumes from).
"""
import argparse
import os
import os.path as osp
import signal
import sys

import torch

from fairclip.toolbox import (
    BACKEND, DASSL_IMPORT_ERROR, DATASET_REGISTRY, TRAINER_REGISTRY, UserError, build_trainer,
    set_random_seed, setup_logger,
)
from fairclip.toolbox.errors import report_error

from fairclip import datasets  # registers the dataset readers
from fairclip import trainers  # noqa: F401  (registers the trainers)
from fairclip.config import get_cfg, merge_config_file, yacs_message
from fairclip.trainers import _distributed, _run_folder

INTERRUPTED = 130  # exit status of a run stopped by Ctrl-C or SIGTERM


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so the run stops the same way."""


def _on_sigterm(signum, frame):
    raise Interrupted("SIGTERM")


def interrupted_message(cfg, trainer, what="Ctrl-C"):
    """The one line for an interrupted run: where it stopped and which epoch a rerun resumes from."""
    during = ""
    if trainer is not None and trainer.get_model_names() and getattr(trainer, "max_epoch", 0):
        during = " during epoch {}/{}".format(min(trainer.epoch + 1, trainer.max_epoch), trainer.max_epoch)
    done = _run_folder.last_checkpoint_epoch(cfg.OUTPUT_DIR) if cfg is not None else 0
    if done:
        then = "rerunning the same command resumes from epoch {} (the checkpoint of epoch {} is intact)".format(
            done + 1, done)
    else:
        then = "no checkpoint was written, so rerunning the same command starts from epoch 1"
    return "interrupted ({}){}; {}".format(what, during, then)


def print_args(args, cfg):
    print("***************")
    print("** Arguments **")
    print("***************")
    for key in sorted(args.__dict__):
        print("{}: {}".format(key, args.__dict__[key]))
    print("************")
    print("** Config **")
    print("************")
    print(cfg)


def env_summary():
    """The versions and hardware a run depends on. (Dassl prints torch's full collect_env report, whose
    subprocesses cost seconds per run; ``toolbox.collect_env_info()`` still gives it.)"""
    import platform

    import PIL
    import torchvision

    lines = [
        "Python {} ({})".format(platform.python_version(), platform.platform()),
        "PyTorch {} (CUDA {}, cuDNN {}), torchvision {}, Pillow {}".format(
            torch.__version__, torch.version.cuda, torch.backends.cudnn.version() if torch.cuda.is_available() else None,
            torchvision.__version__, PIL.__version__),
        "CPU threads: {}".format(torch.get_num_threads()),
    ]
    if torch.cuda.is_available():
        lines += ["GPU {}: {}".format(i, torch.cuda.get_device_name(i)) for i in range(torch.cuda.device_count())]
    else:
        lines.append("GPU: none")
    return "\n".join(lines)


def reset_cfg(cfg, args):
    """Map command-line arguments onto config keys (each only when given, as in CoOp)."""
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    if args.resume:
        cfg.RESUME = args.resume
    if args.seed is not None and args.seed >= 0:
        cfg.SEED = args.seed
    if args.source_domains:
        cfg.DATASET.SOURCE_DOMAINS = args.source_domains
    if args.target_domains:
        cfg.DATASET.TARGET_DOMAINS = args.target_domains
    if args.transforms:
        cfg.INPUT.TRANSFORMS = args.transforms
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer
    if args.backbone:
        cfg.MODEL.BACKBONE.NAME = args.backbone
    if args.head:
        cfg.MODEL.HEAD.NAME = args.head


def setup_cfg(args):
    cfg = get_cfg()
    for path, what in [(args.dataset_config_file, "dataset config file"), (args.config_file, "method config file")] + [
            (p, "extra config file") for p in (args.extra_config_file or [])]:
        merge_config_file(cfg, path, what)  # a method config also brings its per-dataset override
    reset_cfg(cfg, args)
    flags = [o for o in args.opts[::2] if o.startswith("--")]
    if flags:
        raise UserError("option {} comes after the KEY VALUE overrides; put every --option before the first "
                        "KEY VALUE pair".format(flags[0]))
    if len(args.opts) % 2 != 0:
        raise UserError(
            "command-line overrides must be KEY VALUE pairs, got an odd number of items: {}".format(args.opts)
        )
    try:
        cfg.merge_from_list(args.opts)
    except (KeyError, AssertionError, ValueError) as exc:
        raise UserError("command-line override: {}".format(yacs_message(exc))) from exc
    # Checked here, before the output folder or log exists: the registries themselves raise a traceback.
    trainers_known = sorted(TRAINER_REGISTRY.registered_names())
    if cfg.TRAINER.NAME not in trainers_known:
        raise UserError("--trainer {!r} is not a trainer; choose one of {}".format(
            cfg.TRAINER.NAME, ", ".join(trainers_known)))
    if cfg.DATASET.NAME not in DATASET_REGISTRY.registered_names():
        raise UserError("DATASET.NAME {!r} is not a dataset reader; give --dataset-config-file "
                        "configs/datasets/<key>.yaml (keys: {})".format(cfg.DATASET.NAME, ", ".join(datasets.DATASET_KEYS)))
    if not cfg.RUN.CFG_NAME and args.config_file:
        cfg.RUN.CFG_NAME = osp.splitext(osp.basename(args.config_file))[0]
    cfg.freeze()
    return cfg


def main(args, run=None):
    """``run`` (a dict) receives the config and the trainer as soon as they exist (for the interrupt line)."""
    run = {} if run is None else run
    cfg = run["cfg"] = setup_cfg(args)
    # Under torchrun: join the process group; rank 0 alone logs (the others print nothing, errors still
    # reach stderr), writes checkpoints and results.
    rank, _ = _distributed.init_from_env(use_cuda=cfg.USE_CUDA)
    if rank == 0:
        # Before anything is written there: a writable folder, locked for this run, holding no other run
        # (--fresh discards the previous one).
        _run_folder.prepare(cfg, fresh=args.fresh, train=not (args.eval_only or args.no_train))
    if cfg.SEED >= 0:
        print("Setting fixed seed: {}".format(cfg.SEED))
        set_random_seed(cfg.SEED)
    if rank == 0:
        setup_logger(cfg.OUTPUT_DIR)
    else:
        sys.stdout = open(os.devnull, "w")

    if torch.cuda.is_available() and cfg.USE_CUDA:
        # Deterministic algorithms are not forced on GPU (speed); CPU runs are reproducible.
        torch.backends.cudnn.benchmark = True

    print("Toolbox backend: {}{}".format(
        BACKEND, "" if BACKEND == "dassl" or not DASSL_IMPORT_ERROR else " (dassl not importable: {})".format(DASSL_IMPORT_ERROR)
    ))
    print_args(args, cfg)
    print("** System info **\n{}\n".format(env_summary()))

    trainer = run["trainer"] = build_trainer(cfg)
    _distributed.reseed_for_rank(cfg.SEED)  # own augmentation stream per rank (the model is built)

    if args.eval_only:
        if not args.model_dir and trainer.get_model_names():
            raise UserError("--eval-only needs --model-dir pointing at a finished run's output folder")
        trainer.load_model(args.model_dir, epoch=args.load_epoch)
        trainer.test()
        return

    if not args.no_train:
        run["training"] = True
        trainer.train()


HELP_DESCRIPTION = """Adapt CLIP to a dataset with one of this toolbox's trainers (or evaluate it), CoOp's command
line: --trainer picks the method, --dataset-config-file the dataset, --config-file the method's recipe, and
trailing KEY VALUE pairs override any config key (e.g. OPTIM.MAX_EPOCH 5 MODEL.BACKBONE.PATH clip.pt).
The scripts in scripts/<method>/main.sh run this once per seed; README.md and docs/ describe the methods."""


def help_epilog():
    """The trainers and datasets this checkout knows, for --help."""
    import textwrap

    from fairclip.datasets import DATASET_KEYS

    def para(text):
        return textwrap.fill(text, width=100, subsequent_indent="  ")

    return "\n".join([
        para("trainers (--trainer): " + ", ".join(sorted(TRAINER_REGISTRY.registered_names()))),
        para("datasets (--dataset-config-file configs/datasets/<key>.yaml): " + ", ".join(sorted(DATASET_KEYS))),
        para("method configs (--config-file): configs/trainers/<trainer>/vit_b32.yaml; the per-dataset override in "
             "its per_dataset/ folder is merged automatically."),
        "example:",
        "  python train.py --root data --seed 1 --trainer FAIR --dataset-config-file configs/datasets/dtd.yaml \\",
        "    --config-file configs/trainers/FAIR/vit_b32.yaml --output-dir output/dtd/FAIR/vit_b32/seed1",
    ])


def build_parser():
    parser = argparse.ArgumentParser(prog="python train.py", description=HELP_DESCRIPTION, epilog=help_epilog(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=str, default="", help="dataset root: the folder that holds the dataset folders")
    parser.add_argument("--output-dir", type=str, default="",
                        help="run folder: log.txt, checkpoints, history.json, results.json")
    parser.add_argument("--resume", type=str, default="",
                        help="run folder to resume from (default: --output-dir itself, when it has checkpoints)")
    parser.add_argument("--seed", type=int, default=-1, help="random seed; a negative value leaves the run unseeded")
    parser.add_argument("--source-domains", type=str, nargs="+",
                        help="DATASET.SOURCE_DOMAINS (kept from CoOp's command line; no reader here uses domains)")
    parser.add_argument("--target-domains", type=str, nargs="+",
                        help="DATASET.TARGET_DOMAINS (kept from CoOp's command line; no reader here uses domains)")
    parser.add_argument("--transforms", type=str, nargs="+", help="INPUT.TRANSFORMS: the train-view transforms")
    parser.add_argument("--config-file", type=str, default="",
                        help="the method's config, e.g. configs/trainers/FAIR/vit_b32.yaml")
    parser.add_argument("--dataset-config-file", type=str, default="",
                        help="the dataset's config, e.g. configs/datasets/dtd.yaml")
    parser.add_argument("--extra-config-file", type=str, action="append",
                        help="YAML merged after --config-file (e.g. a per-dataset override); repeatable")
    parser.add_argument("--trainer", type=str, default="", help="the method's trainer (listed below)")
    parser.add_argument("--backbone", type=str, default="",
                        help="MODEL.BACKBONE.NAME: a CLIP model name such as ViT-B/32 (MODEL.BACKBONE.PATH: a local file)")
    parser.add_argument("--head", type=str, default="", help="MODEL.HEAD.NAME (kept from CoOp's command line; unused here)")
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate without training (training-free methods, or a finished run with --model-dir)")
    parser.add_argument("--model-dir", type=str, default="", help="with --eval-only: a finished run folder to load")
    parser.add_argument("--load-epoch", type=int, help="with --eval-only: the epoch's checkpoint to load (default: the last)")
    parser.add_argument("--no-train", action="store_true", help="build everything, then stop (no training)")
    parser.add_argument("--fresh", action="store_true",
                        help="discard the run the output folder holds (checkpoints, history, results) and start afresh")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides, after every --option: KEY VALUE pairs")
    return parser


def _report(exc):
    """One clear line, no traceback: on stderr, and in log.txt when the run log is open."""
    log = getattr(sys.stdout, "file", None)
    if log is not None:
        report_error(exc, log)
        log.flush()
    return report_error(exc)


def cli(argv=None):
    args = build_parser().parse_args(argv)
    run = {}
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (an embedding caller): keep its handler
        previous = None
    try:
        main(args, run)
    except UserError as exc:
        _distributed.cleanup()
        sys.exit(_report(exc))
    except KeyboardInterrupt as exc:
        what = "SIGTERM" if isinstance(exc, Interrupted) else "Ctrl-C"
        _report(interrupted_message(run.get("cfg"), run.get("trainer") if run.get("training") else None, what))
        sys.exit(INTERRUPTED)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    _distributed.cleanup()


if __name__ == "__main__":
    cli()
