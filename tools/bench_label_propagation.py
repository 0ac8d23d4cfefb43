"""What ReCLIP's label propagation costs as the train split grows (docs/speed.md; a measurement, not a test).

    python -m tools.bench_label_propagation [--n 1000 5000 20000] [--classes 100] [--dim 512] [--k 20]
                                            [--device cpu|cuda] [--repeats 1]

For each N: N random unit features drawn around C class directions (plus C class nodes, as ReCLIP adds the
class embeddings), then the steps of ``trainers.reclip`` timed separately: the class-subspace projection,
the chunked sparse kNN graph (``KNN_CHUNK`` rows at a time), the conjugate-gradient solve for all classes
and the cluster centroids. Prints one line per N with the seconds of each step, the largest buffers of
each step (analytic, from the sizes) and the process's peak memory (CPU: resident set; CUDA: allocated).
"""
import argparse
import resource
import time

import torch
import torch.nn.functional as F

from fairclip.trainers.reclip import (as_csr, class_subspace_projection, cluster_centroids, conjugate_gradient,
                                      knn_affinity)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fake_world(n, classes, dim, device, seed=0):
    """``(feats [n, dim], class_nodes [classes, dim])``: unit features scattered around class directions."""
    g = torch.Generator().manual_seed(seed)
    nodes = F.normalize(torch.randn(classes, dim, generator=g), dim=-1)
    labels = torch.randint(0, classes, (n,), generator=g)
    feats = F.normalize(nodes[labels] + 0.08 * torch.randn(n, dim, generator=g), dim=-1)
    return feats.to(device), nodes.to(device)


def analytic_bytes(n, classes, dim, k, chunk):
    """Largest buffers (bytes, fp32 values, int64 indices) of each step for ``n`` nodes."""
    return {
        "knn": chunk * n * 4 + 2 * n * k * (2 * 8 + 4) * 2,  # similarity block + edges (before/after coalescing)
        "cg": 6 * n * classes * 4,  # x, r, p, q, b and one temporary, each [n, C]
        "features": n * dim * 4,
    }


def measure(n, classes, dim, k, chunk, device, iters=20):
    feats, nodes = fake_world(n, classes, dim, device)
    times = {}
    _sync(device)
    t = time.perf_counter()
    projection = class_subspace_projection(nodes, 768)
    points = F.normalize(torch.cat([nodes, feats]) @ projection, dim=-1)
    _sync(device)
    times["projection"] = time.perf_counter() - t
    t = time.perf_counter()
    graph = knn_affinity(points, k, chunk)
    nnz = graph._nnz()
    graph = as_csr(graph)
    _sync(device)
    times["knn"] = time.perf_counter() - t
    m = points.shape[0]
    y = torch.zeros(m, classes, device=device)
    y[torch.arange(classes), torch.arange(classes)] = 1.0
    t = time.perf_counter()
    scores = conjugate_gradient(lambda v: v - 0.99 * (graph @ v), y, iters, 1e-6)
    pred = scores.argmax(1)
    _sync(device)
    times["cg"] = time.perf_counter() - t
    t = time.perf_counter()
    cluster_centroids(torch.cat([nodes, feats]), pred, nodes)
    _sync(device)
    times["centroids"] = time.perf_counter() - t
    return times, nnz


def peak_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.bench_label_propagation", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[1000, 5000, 20000], help="train images (default 1000 5000 20000)")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--chunk", type=int, default=1024, help="KNN_CHUNK rows (default 1024)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=1, help="runs per N; the fastest is reported")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    print("label propagation: C={} classes, D={}, k={}, chunk {}, 20 CG iterations, device {}, {} thread(s)".format(
        args.classes, args.dim, args.k, args.chunk, device, torch.get_num_threads()))
    for n in args.n:
        best = None
        for _ in range(max(1, args.repeats)):
            times, nnz = measure(n, args.classes, args.dim, args.k, args.chunk, device)
            if best is None or sum(times.values()) < sum(best.values()):
                best = times
        size = analytic_bytes(n + args.classes, args.classes, args.dim, args.k, args.chunk)
        print("N={:>7}: total {:7.2f} s (projection {:.2f}, kNN graph {:.2f}, CG {:.2f}, centroids {:.2f}); "
              "graph {} entries; largest buffers: kNN {:.0f} MiB, CG {:.0f} MiB; peak {:.0f} MiB".format(
                  n, sum(best.values()), best["projection"], best["knn"], best["cg"], best["centroids"], nnz,
                  size["knn"] / 2 ** 20, size["cg"] / 2 ** 20, peak_mb(device)))


if __name__ == "__main__":
    main()
