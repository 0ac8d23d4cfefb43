"""Evaluation batches gathered by threads straight from the decoded cache (docs/speed.md).

Centre-only evaluation moves the most pixels per unit of compute (one 224² view per image, no
augmentation). Through DataLoader worker processes every batch is copied three times on the host (into
the worker's canvas, into shared memory to cross the process boundary, into pinned memory) and the
single pin-memory thread becomes the ceiling (about 11,000 images/s on an H200, half the model's rate).
Here a few threads of the training process copy each image's central square once, into one of a small
ring of reused pinned buffers, and the batch goes to the GPU on a side stream; no worker processes.

Batches are those of ``collate_canvas(items, center_square=True)`` in the sampler's order: same keys,
same pixels, same padding. On CUDA every tensor of a yielded batch is already on the device and the
current stream waits for its copy (no host sync); elsewhere the batches stay on the CPU.
"""
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from fairclip.datasets.decoded_cache import canvas_shape, central_square, fill_canvas, item_fields

_DONE = object()


class PinnedCenterLoader:
    """Batches of central squares of ``dataset`` (a ``CachedImages``) over ``indices`` (a sampler or a
    list; order kept), ``batch_size`` per batch, the last one possibly smaller. ``threads``: copy threads
    per batch; ``depth``: pinned buffers in flight. Has the DataLoader attributes the evaluators use."""

    def __init__(self, dataset, indices, batch_size, device, threads=4, depth=3, edge=2):
        self.dataset = dataset
        self.sampler = indices
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.threads = max(1, int(threads))
        self.depth = max(2, int(depth))
        self.edge = edge

    def __len__(self):
        n = len(self.sampler)
        return (n + self.batch_size - 1) // self.batch_size

    def _batches(self):
        order = list(self.sampler)
        for start in range(0, len(order), self.batch_size):
            yield order[start:start + self.batch_size]

    def _gather(self, idx, buffer, pool):
        """The batch of ``idx`` with its canvas written into ``buffer`` (flat uint8 tensor) or a new tensor."""
        items = [self.dataset[i] for i in idx]
        imgs = [central_square(it["img"]) for it in items]
        sizes, hmax, wmax = canvas_shape(imgs)
        numel = len(imgs) * hmax * wmax * 3
        if buffer is None or buffer.numel() < numel:
            canvas = torch.empty((len(imgs), hmax, wmax, 3), dtype=torch.uint8)
        else:
            canvas = buffer[:numel].view(len(imgs), hmax, wmax, 3)
        array = canvas.numpy()
        step = (len(imgs) + self.threads - 1) // self.threads
        parts = [(s, min(s + step, len(imgs))) for s in range(0, len(imgs), step)]
        # numpy releases the GIL for these copies, so the parts are filled in parallel
        list(pool.map(lambda p: fill_canvas(array[p[0]:p[1]], imgs[p[0]:p[1]], self.edge), parts))
        return dict(canvas=canvas, sizes=torch.from_numpy(sizes), **item_fields(items))

    def __iter__(self):
        if self.device.type != "cuda":
            with ThreadPoolExecutor(self.threads) as pool:
                for idx in self._batches():
                    yield self._gather(idx, None, pool)
            return
        yield from self._iter_cuda()

    def _iter_cuda(self):
        device = self.device
        # central squares are at most the cache's side: one buffer fits any batch (a smaller fallback side
        # only makes an oversized batch take a fresh pinned tensor)
        side = getattr(getattr(self.dataset, "cache", None), "side", 224)
        capacity = self.batch_size * side * side * 3
        buffers = [torch.empty(capacity, dtype=torch.uint8, pin_memory=True) for _ in range(self.depth)]
        uploaded = [None] * self.depth  # event after the upload from buffer k; the buffer is free after it
        free, ready = queue.Queue(), queue.Queue(maxsize=self.depth)
        for k in range(self.depth):
            free.put(k)
        stop = threading.Event()

        def produce():
            try:
                with ThreadPoolExecutor(self.threads) as pool:
                    for idx in self._batches():
                        k = free.get()
                        if stop.is_set():
                            return
                        if uploaded[k] is not None:
                            uploaded[k].synchronize()  # this thread waits, the training thread does not
                        batch = self._gather(idx, buffers[k], pool)
                        for key in ("sizes", "label", "domain", "index"):
                            batch[key] = batch[key].pin_memory()
                        if batch["canvas"].data_ptr() != buffers[k].data_ptr():  # an oversized batch
                            batch["canvas"] = batch["canvas"].pin_memory()
                        ready.put((k, batch))
                ready.put((None, _DONE))
            except BaseException as exc:  # handed to the consumer, raised there
                ready.put((None, exc))

        copy_stream = torch.cuda.Stream(device)
        worker = threading.Thread(target=produce, name="pinned-center-loader", daemon=True)
        worker.start()
        try:
            while True:
                k, batch = ready.get()
                if batch is _DONE:
                    return
                if isinstance(batch, BaseException):
                    raise batch
                with torch.cuda.stream(copy_stream):
                    moved = {key: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                             for key, v in batch.items()}
                    event = torch.cuda.Event()
                    event.record(copy_stream)
                uploaded[k] = event
                free.put(k)
                current = torch.cuda.current_stream(device)
                current.wait_event(event)
                for value in moved.values():
                    if torch.is_tensor(value):
                        value.record_stream(current)
                yield moved
        finally:
            stop.set()
            free.put(0)  # wakes the producer if it waits for a buffer
            while worker.is_alive():
                try:
                    ready.get(timeout=0.1)  # unblocks a producer waiting to hand over a batch
                except queue.Empty:
                    pass
            worker.join()


def use_pinned_center_loader(device, num_workers):
    """Whether centre-only evaluation uses ``PinnedCenterLoader``: on CUDA, unless NUM_WORKERS is 0
    (which asks for everything in the main thread)."""
    return torch.device(device).type == "cuda" and int(num_workers) > 0

