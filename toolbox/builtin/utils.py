"""Utilities mirroring ``dassl.utils``: registry, I/O, logging, seeding, meters, checkpoints.

Differences from Dassl that keep behaviour but fix modern-torch breakage:
* checkpoints are written atomically (temp file + ``os.replace``), ``model-best.pth.tar`` too;
* checkpoints are loaded with ``weights_only=True`` (``toolbox.checkpoints.safe_load``): a file that would
  import or call anything is refused before it runs; the ``checkpoint`` pointer may only name a plain
  file in its folder (``toolbox.checkpoints.pointer_target``).
"""
import difflib
import errno
import json
import os
import os.path as osp
import random
import shutil
import sys
import time
import warnings
from collections import OrderedDict, defaultdict

import numpy as np
import PIL
import torch
from PIL import Image

from ..checkpoints import pointer_target, safe_load
from ..io import atomic_file, atomic_torch_save, atomic_write_json, atomic_write_text

__all__ = [
    "Registry", "check_availability", "get_most_similar_str_to_a_from_b",
    "mkdir_if_missing", "check_isfile", "read_json", "write_json",
    "set_random_seed", "download_url", "read_image", "collect_env_info", "listdir_nohidden",
    "tolist_if_not", "setup_logger", "Logger", "AverageMeter", "MetricMeter",
    "save_checkpoint", "load_checkpoint", "resume_from_checkpoint", "load_pretrained_weights",
    "count_num_param", "open_all_layers", "open_specified_layers", "init_network_weights",
]


# --------------------------------------------------------------------------- registry
class Registry:
    """Name -> object map filled with ``@REGISTRY.register()``; the key is ``obj.__name__``."""

    def __init__(self, name):
        self._name = name
        self._obj_map = {}

    def _do_register(self, name, obj, force=False):
        if name in self._obj_map and not force:
            raise KeyError(
                'An object named "{}" was already registered in "{}" registry'.format(name, self._name)
            )
        self._obj_map[name] = obj

    def register(self, obj=None, force=False):
        if obj is None:
            def wrapper(fn_or_class):
                self._do_register(fn_or_class.__name__, fn_or_class, force=force)
                return fn_or_class
            return wrapper
        self._do_register(obj.__name__, obj, force=force)

    def get(self, name):
        if name not in self._obj_map:
            raise KeyError('Object name "{}" does not exist in "{}" registry'.format(name, self._name))
        return self._obj_map[name]

    def registered_names(self):
        return list(self._obj_map.keys())


def get_most_similar_str_to_a_from_b(a, b):
    """Return the string in ``b`` closest to ``a`` (for "did you mean" messages)."""
    best, best_sim = None, -1.0
    for candidate in b:
        sim = difflib.SequenceMatcher(None, a, candidate).ratio()
        if sim > best_sim:
            best, best_sim = candidate, sim
    return best


def check_availability(requested, available):
    if requested not in available:
        psb_ans = get_most_similar_str_to_a_from_b(requested, available)
        raise ValueError(
            "The requested one is expected to belong to {}, but got [{}] "
            "(do you mean [{}]?)".format(available, requested, psb_ans)
        )


# --------------------------------------------------------------------------- files
def mkdir_if_missing(dirname):
    if not osp.exists(dirname):
        try:
            os.makedirs(dirname)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise


def check_isfile(fpath):
    isfile = osp.isfile(fpath)
    if not isfile:
        warnings.warn('No file found at "{}"'.format(fpath))
    return isfile


def read_json(fpath):
    with open(fpath, "r") as f:
        return json.load(f)


def write_json(obj, fpath):
    """Write ``obj`` as JSON (indent 4, parent folder created), atomically."""
    atomic_write_json(obj, fpath)


def listdir_nohidden(path, sort=False):
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    if sort:
        items.sort()
    return items


def read_image(path):
    """Read an image as an RGB ``PIL.Image``."""
    if not osp.exists(path):
        raise IOError("No file exists at {}".format(path))
    return Image.open(path).convert("RGB")


def download_url(url, dst):
    import urllib.request

    print('* url="{}"'.format(url))
    print('* destination="{}"'.format(dst))
    mkdir_if_missing(osp.dirname(dst))
    urllib.request.urlretrieve(url, dst)
    sys.stdout.write("\n")


def tolist_if_not(x):
    if not isinstance(x, list):
        x = [x]
    return x


# --------------------------------------------------------------------------- seeding / env
def set_random_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def collect_env_info():
    from torch.utils.collect_env import get_pretty_env_info

    env_str = get_pretty_env_info()
    env_str += "\n        Pillow ({})".format(PIL.__version__)
    return env_str


# --------------------------------------------------------------------------- logging
class Logger:
    """Tee ``sys.stdout`` into a file (what ``setup_logger`` installs)."""

    def __init__(self, fpath=None):
        self.console = sys.stdout
        self.file = None
        if fpath is not None:
            mkdir_if_missing(osp.dirname(osp.abspath(fpath)))
            self.file = open(fpath, "w")

    def __del__(self):
        self.close()

    def __enter__(self):
        pass

    def __exit__(self, *args):
        self.close()

    def write(self, msg):
        self.console.write(msg)
        if self.file is not None:
            self.file.write(msg)

    def flush(self):
        self.console.flush()
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())

    def isatty(self):
        return False

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None


def setup_logger(output=None):
    """Tee stdout to ``output/log.txt`` (or to ``output`` if it ends in .txt/.log).

    As in Dassl, an existing log is never overwritten: the new one gets a time suffix.
    """
    if output is None:
        return
    if output.endswith(".txt") or output.endswith(".log"):
        fpath = output
    else:
        fpath = osp.join(output, "log.txt")
    if osp.exists(fpath):
        fpath += time.strftime("-%Y-%m-%d-%H-%M-%S")
    # Unwrap a previous tee so repeated calls in one process do not nest loggers.
    if isinstance(sys.stdout, Logger):
        sys.stdout.close()
        sys.stdout = sys.stdout.console
    sys.stdout = Logger(fpath)


# --------------------------------------------------------------------------- meters
def _host_value(x):
    return x.item() if isinstance(x, torch.Tensor) else x


class AverageMeter:
    """Running value/average. Tensor values stay on their device until ``val``/``avg``/``sum`` is read
    (one host sync then), so a loop that prints every N steps waits for the device every N steps only.
    Printed values are the same as Dassl's meter."""

    def __init__(self, ema=False):
        self.ema = ema
        self.reset()

    def reset(self):
        self._val = 0
        self._avg = 0
        self._sum = 0
        self.count = 0

    def update(self, val, n=1):
        if isinstance(val, torch.Tensor):
            val = val.detach()
            if val.device.type != "mps":  # accumulate in double, as Python floats do
                val = val.double()
        self._val = val
        self._sum = self._sum + val * n
        self.count += n
        if self.ema:
            self._avg = self._avg * 0.9 + val * 0.1
        else:
            self._avg = None  # sum / count, computed when read

    @property
    def val(self):
        return _host_value(self._val)

    @property
    def sum(self):
        return _host_value(self._sum)

    @property
    def avg(self):
        if self._avg is None:
            return _host_value(self._sum) / self.count
        return _host_value(self._avg)


class MetricMeter:
    def __init__(self, delimiter=" "):
        self.meters = defaultdict(AverageMeter)
        self.delimiter = delimiter

    def update(self, input_dict):
        if input_dict is None:
            return
        if not isinstance(input_dict, dict):
            raise TypeError("Input to MetricMeter.update() must be a dictionary")
        for k, v in input_dict.items():
            self.meters[k].update(v)  # tensors are read lazily (see AverageMeter)

    def __str__(self):
        return self.delimiter.join(
            "{} {:.4f} ({:.4f})".format(name, meter.val, meter.avg) for name, meter in self.meters.items()
        )


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(state, save_dir, is_best=False, remove_module_from_keys=True, model_name=""):
    """Save ``state`` to ``save_dir/model.pth.tar-<epoch>`` (or ``model_name``) atomically and
    point ``save_dir/checkpoint`` at it; ``is_best`` also copies it to ``model-best.pth.tar``."""
    mkdir_if_missing(save_dir)
    if remove_module_from_keys:
        state_dict = state["state_dict"]
        new_state_dict = OrderedDict()
        for k, v in state_dict.items():
            if k.startswith("module."):
                k = k[7:]
            new_state_dict[k] = v
        state["state_dict"] = new_state_dict

    epoch = state["epoch"]
    if not model_name:
        model_name = "model.pth.tar-" + str(epoch)
    fpath = osp.join(save_dir, model_name)
    atomic_torch_save(state, fpath)
    print('Checkpoint saved to "{}"'.format(fpath))

    atomic_write_text("{}\n".format(osp.basename(fpath)), osp.join(save_dir, "checkpoint"))

    if is_best:
        best_fpath = osp.join(osp.dirname(fpath), "model-best.pth.tar")
        with open(fpath, "rb") as src, atomic_file(best_fpath, "wb") as dst:
            shutil.copyfileobj(src, dst)
        print('Best checkpoint saved to "{}"'.format(best_fpath))


def load_checkpoint(fpath):
    """Load a checkpoint with ``weights_only=True`` on the CPU (a one-line ``UserError`` for a missing,
    damaged or code-carrying file)."""
    if fpath is None:
        raise ValueError("File path is None")
    return safe_load(fpath)


def resume_from_checkpoint(fdir, model, optimizer=None, scheduler=None):
    fpath = pointer_target(fdir)
    print('Loading checkpoint from "{}"'.format(fpath))
    checkpoint = load_checkpoint(fpath)
    model.load_state_dict(checkpoint["state_dict"])
    print("Loaded model weights")
    if optimizer is not None and checkpoint.get("optimizer") is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        print("Loaded optimizer")
    if scheduler is not None and checkpoint.get("scheduler") is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
        print("Loaded scheduler")
    start_epoch = checkpoint["epoch"]
    print("Previous epoch: {}".format(start_epoch))
    return start_epoch


def load_pretrained_weights(model, weight_path):
    checkpoint = load_checkpoint(weight_path)
    state_dict = checkpoint["state_dict"] if "state_dict" in checkpoint else checkpoint
    model_dict = model.state_dict()
    new_state_dict = OrderedDict()
    matched, discarded = [], []
    for k, v in state_dict.items():
        if k.startswith("module."):
            k = k[7:]
        if k in model_dict and model_dict[k].size() == v.size():
            new_state_dict[k] = v
            matched.append(k)
        else:
            discarded.append(k)
    model_dict.update(new_state_dict)
    model.load_state_dict(model_dict)
    if not matched:
        warnings.warn('Cannot load "{}" (check the key names manually)'.format(weight_path))
    else:
        print('Successfully loaded pretrained weights from "{}"'.format(weight_path))
        if discarded:
            print("Layers discarded due to unmatched keys or size: {}".format(discarded))


def count_num_param(model=None, params=None):
    if model is not None:
        return sum(p.numel() for p in model.parameters())
    if params is not None:
        s = 0
        for p in params:
            if isinstance(p, dict):
                s += p["params"].numel()
            else:
                s += p.numel()
        return s
    raise ValueError("model and params must not both be None")


def open_all_layers(model):
    model.train()
    for p in model.parameters():
        p.requires_grad = True


def open_specified_layers(model, open_layers):
    if isinstance(model, torch.nn.DataParallel):
        model = model.module
    if isinstance(open_layers, str):
        open_layers = [open_layers]
    for layer in open_layers:
        assert hasattr(model, layer), "{} is not an attribute".format(layer)
    for name, module in model.named_children():
        is_open = name in open_layers
        module.train(is_open)
        for p in module.parameters():
            p.requires_grad = is_open


def init_network_weights(model, init_type="normal", gain=0.02):
    import torch.nn as nn

    def _init_func(m):
        classname = m.__class__.__name__
        if hasattr(m, "weight") and ("Conv" in classname or "Linear" in classname):
            if init_type == "normal":
                nn.init.normal_(m.weight.data, 0.0, gain)
            elif init_type == "xavier":
                nn.init.xavier_normal_(m.weight.data, gain=gain)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(m.weight.data, a=0, mode="fan_in")
            elif init_type == "orthogonal":
                nn.init.orthogonal_(m.weight.data, gain=gain)
            else:
                raise NotImplementedError("initialization method {} is not implemented".format(init_type))
            if hasattr(m, "bias") and m.bias is not None:
                nn.init.constant_(m.bias.data, 0.0)
        elif "BatchNorm" in classname or "InstanceNorm" in classname:
            if getattr(m, "weight", None) is not None:
                nn.init.constant_(m.weight.data, 1.0)
            if getattr(m, "bias", None) is not None:
                nn.init.constant_(m.bias.data, 0.0)

    model.apply(_init_func)
