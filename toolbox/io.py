"""Atomic file writes (temp file in the same folder + ``os.replace``), usable on both backends."""
import json
import os
import os.path as osp
import tempfile


def _tmp_in(fpath):
    dirname = osp.dirname(osp.abspath(fpath))
    os.makedirs(dirname, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + osp.basename(fpath) + "-", dir=dirname)
    return fd, tmp


def atomic_write_text(text, fpath):
    """Write ``text`` to ``fpath`` so that readers see either the old or the whole new file."""
    fd, tmp = _tmp_in(fpath)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, fpath)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(obj, fpath, indent=4, ensure_ascii=True):
    text = json.dumps(obj, indent=indent, separators=(",", ": "), ensure_ascii=ensure_ascii)
    atomic_write_text(text + "\n", fpath)


def atomic_torch_save(obj, fpath):
    import torch

    fd, tmp = _tmp_in(fpath)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, fpath)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise
