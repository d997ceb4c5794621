"""What the sampling and evaluation code needs to know of a dataset, whatever its kind: the sample shape, the class
count (0: unconditional), the networks that take it, the labels a class-balanced sample set is conditioned on, and
how a sample set is stored.

Points (the 2D datasets) are stored as float ``samples``; images as uint8 ``images`` with their ``labels``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gmflow.harness import registry


def balanced_labels(num_samples: int, num_classes: int) -> torch.Tensor:
    """Sample ``i`` gets class ``i mod num_classes``: equal class counts, independent of batching."""
    return torch.arange(num_samples) % num_classes


@dataclass(frozen=True)
class PointDataset:
    """A 2D dataset: unconditional points ``(N, 2)``."""

    name: str
    sample_shape: tuple[int, ...] = (2,)
    num_classes: int = 0
    networks: tuple[str, ...] = registry.NETWORKS_2D

    def labels(self, num_samples: int) -> torch.Tensor | None:
        return None

    def sample_arrays(self, x: np.ndarray, labels: torch.Tensor | None = None) -> dict[str, np.ndarray]:
        return {"samples": x}


@dataclass(frozen=True)
class ImageDatasetInfo:
    """An image dataset: images ``(N, C, H, W)`` in ``[-1, 1]``, stored as uint8; class-conditional, or
    unconditional when ``num_classes`` is 0 (sample sets then have no labels)."""

    name: str
    sample_shape: tuple[int, ...]
    num_classes: int
    networks: tuple[str, ...] = registry.IMAGE_NETWORKS

    def labels(self, num_samples: int) -> torch.Tensor | None:
        return balanced_labels(num_samples, self.num_classes) if self.num_classes else None

    def sample_arrays(self, x: np.ndarray, labels: torch.Tensor | None = None) -> dict[str, np.ndarray]:
        from gmflow.harness.data_images import to_uint8

        images = {"images": to_uint8(torch.from_numpy(x)).numpy()}
        return images if labels is None else {**images, "labels": labels.numpy()}


def dataset_info(name: str) -> PointDataset | ImageDatasetInfo:
    if name in registry.DATASETS_2D:
        return PointDataset(name)
    if name in registry.IMAGE_DATASETS:
        from gmflow.harness.data_images import IMAGE_DATASETS

        ds = IMAGE_DATASETS[name]
        num_classes = ds.num_classes if ds.conditional else 0  # an unconditional dataset's runs see no labels
        return ImageDatasetInfo(name, (ds.channels, ds.resolution, ds.resolution), num_classes)
    raise ValueError(f"unknown dataset {name!r}; choose one of {list(registry.DATASETS)}")
