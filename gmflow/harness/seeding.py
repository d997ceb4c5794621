"""One way to derive random streams: a generator per key, e.g. ``(seed, block)`` for sample block ``block``.

Sample ``i`` of a set comes from stream ``(seed, i // block_size)``, so it does not depend on batch size, worker count
or device; a training run of LFM block ``n`` draws from ``(seed, n)`` and its student from ``(seed, n, 1)``.
"""

from __future__ import annotations

import numpy as np
import torch


def stream_generator(*key: int) -> torch.Generator:
    """A CPU generator seeded from ``key`` through :class:`numpy.random.SeedSequence` (independent streams)."""
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1] >> 1))
