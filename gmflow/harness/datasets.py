"""What the sampling and evaluation code needs to know of a dataset, whatever its kind: the sample shape, the class
count (0: unconditional), the networks that take it, the labels a class-balanced sample set is conditioned on, and
how a sample set is stored.

Points (the 2D datasets) are stored as float ``samples``; images as uint8 ``images`` with their ``labels``; latent
datasets (ImageNet 256 in the SD-VAE latent space) decode their samples with the VAE into such uint8 images.
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

    def sample_record(self) -> dict:
        """Fields a sample set's record gets from its dataset (none for pixel datasets)."""
        return {}


@dataclass(frozen=True)
class LatentDatasetInfo(ImageDatasetInfo):
    """A dataset modelled in a VAE's latent space: samples ``(N, C, h, w)`` are latents times ``scaling_factor``.

    ``latents`` is the cache's index (gmflow/harness/data_latents.py): class count, latent shape, resolution and the
    VAE that encoded it. A sample set is stored as uint8 RGB images decoded by ``vae`` (a folder or cached hub id),
    which must be the VAE of the cache (checked by the sha1 of its weights).
    """

    latents: dict | None = None
    vae: str | None = None
    vae_device: str = "auto"
    vae_batch_size: int = 32

    def sample_arrays(self, x: np.ndarray, labels: torch.Tensor | None = None) -> dict[str, np.ndarray]:
        from gmflow.harness.data_latents import LatentDataError, decode_latents, load_vae
        from gmflow.harness.devices import resolve_device

        if self.vae is None:
            raise LatentDataError(f"{self.name} samples are latents: pass the VAE that encoded the cache (--vae, "
                                  f"{self.latents['vae']!r} when it was encoded) to decode them into images")
        model, info = load_vae(self.vae, resolve_device(self.vae_device), self.latents.get("vae_variant"))
        if info.sha1 != self.latents["vae_sha1"]:
            raise LatentDataError(f"VAE {self.vae} (weights sha1 {info.sha1[:12]}) is not the VAE that encoded the "
                                  f"training latents ({self.latents['vae']}, sha1 {self.latents['vae_sha1'][:12]}); "
                                  "decode with that one")
        images = decode_latents(x, model, self.latents["scaling_factor"], self.vae_batch_size)
        return {"images": images.numpy(), "labels": labels.numpy()}

    def sample_record(self) -> dict:
        keys = ("vae", "vae_variant", "vae_sha1", "scaling_factor", "resolution")
        return {**{k: self.latents[k] for k in keys}, "vae_path": self.vae}


def latent_dataset_info(name: str, data_root: str | None = None, latents: dict | None = None,
                        vae: str | None = None, **options) -> LatentDatasetInfo:
    """The info of latent dataset ``name`` from its cache's index (``data_root``) or from an index record (a run
    spec's ``latents``); without either, the paper's ImageNet setting (1000 classes, 4x32x32, SD-VAE 0.18215)."""
    from gmflow.harness.data_latents import SD_VAE_SCALING_FACTOR, read_latent_index

    if latents is None and data_root is not None:
        latents = {k: v for k, v in read_latent_index(data_root).items() if k != "class_names"}
    if latents is None:
        latents = {"num_classes": 1000, "latent_shape": [4, 32, 32], "resolution": 256,
                   "vae": "stabilityai/sd-vae-ft-ema", "vae_variant": "ema", "vae_sha1": None,
                   "scaling_factor": SD_VAE_SCALING_FACTOR}
    return LatentDatasetInfo(name, tuple(latents["latent_shape"]), int(latents["num_classes"]),
                             registry.LATENT_NETWORKS, latents, vae, **options)


def dataset_info(name: str, data_root: str | None = None, **latent_options) -> PointDataset | ImageDatasetInfo:
    """What the harness needs of dataset ``name``; latent datasets read it from their cache (``data_root``) or from
    ``latent_options`` (see :func:`latent_dataset_info`)."""
    if name in registry.LATENT_DATASETS:
        return latent_dataset_info(name, data_root, **latent_options)
    if latent_options.get("vae") is not None:
        raise ValueError(f"a VAE applies to latent datasets ({list(registry.LATENT_DATASETS)}), not to {name!r}")
    if name in registry.DATASETS_2D:
        return PointDataset(name)
    if name in registry.IMAGE_DATASETS:
        from gmflow.harness.data_images import IMAGE_DATASETS

        ds = IMAGE_DATASETS[name]
        num_classes = ds.num_classes if ds.conditional else 0  # an unconditional dataset's runs see no labels
        return ImageDatasetInfo(name, (ds.channels, ds.resolution, ds.resolution), num_classes)
    raise ValueError(f"unknown dataset {name!r}; choose one of {list(registry.DATASETS)}")


def training_arrays(name: str, data_root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split of an image-experiment dataset: ``(x (N, C, H, W), labels (N,) int64)``.

    Pixel datasets: float32 images in ``[-1, 1]``. Latent datasets: the cached latents at ``data_root`` in their stored
    dtype (float16 by default; convert batches with ``.float()``).
    """
    if name in registry.LATENT_DATASETS:
        from gmflow.harness.data_latents import load_latent_cache

        if data_root is None:
            raise ValueError(f"{name} trains from a latent cache: pass its folder (--data-root, made by "
                             "`gmflow-bench images encode-latents`)")
        x, y, _ = load_latent_cache(data_root)
        return x, y
    from gmflow.harness.data_images import load_images

    return load_images(name, "train", data_root)
