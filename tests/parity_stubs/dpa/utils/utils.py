"""Stub of DPA's ``utils/utils.py``: the per-iteration cosine and a metric logger."""
import math

import numpy as np


def cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0,
                     warmup_steps=-1):
    n = epochs * niter_per_ep
    return np.array([final_value + 0.5 * (base_value - final_value) * (1 + math.cos(math.pi * i / n))
                     for i in range(n)])


class MetricLogger:
    def __init__(self, delimiter="\t"):
        self.values = {}

    def update(self, **kwargs):
        for key, value in kwargs.items():
            self.values.setdefault(key, []).append(float(value))
