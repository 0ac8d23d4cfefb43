"""Atomic file writes (temp file in the same folder + ``os.replace``), usable on both backends.

Files get the permissions a plain ``open()`` would give them (0666 less the process umask), not the
0600 of a bare temp file.
"""
import contextlib
import json
import os
import os.path as osp
import tempfile
import threading

_umask_lock = threading.Lock()


def _umask():
    with _umask_lock:  # reading the umask means setting it: keep other threads out meanwhile
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(fpath, mode="w"):
    """Open a temp file beside ``fpath`` for writing; when the block ends without an error, flush,
    fsync and rename it to ``fpath`` (readers see the old or the whole new file), else remove it."""
    dirname = osp.dirname(osp.abspath(fpath))
    os.makedirs(dirname, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + osp.basename(fpath) + "-", dir=dirname)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, fpath)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(text, fpath):
    """Write ``text`` to ``fpath`` so that readers see either the old or the whole new file."""
    with atomic_file(fpath) as f:
        f.write(text)


def atomic_write_json(obj, fpath, indent=4, ensure_ascii=True):
    text = json.dumps(obj, indent=indent, separators=(",", ": "), ensure_ascii=ensure_ascii)
    atomic_write_text(text + "\n", fpath)


def atomic_torch_save(obj, fpath):
    import torch

    with atomic_file(fpath, "wb") as f:
        torch.save(obj, f)
