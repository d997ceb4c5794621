"""Sample and reference batches in the ADM layout, and the float -> uint8 conversion of its sampling scripts
(docs/evaluation.md).

- A *sample batch* is an ``.npz`` with ``arr_0`` uint8 (N, H, W, 3) images and, for class-conditional sets,
  ``arr_1`` (N,) integer labels (``np.savez(path, images, labels)``, the layout of ADM's ``image_sample.py``). This
  project adds one optional key, ``uint8_conversion``, naming how float samples became uint8; the evaluator ignores it.
- A *reference batch* (e.g. ``VIRTUAL_imagenet256_labeled.npz``: 10,000 images) has ``arr_0`` like a sample batch and
  usually the stored statistics ``mu`` (2048,), ``sigma`` (2048, 2048) and the spatial ones ``mu_s``, ``sigma_s``
  (2023,) / (2023, 2023), which the evaluator uses for FID / sFID instead of the statistics of ``arr_0``.

Images are read in batches straight from the ``.npy`` member of the zip file, so a 50,000-image set (9.8 GB at 256^2)
never sits in memory at once.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gmflow.harness.data_images import to_uint8

# ------------------------------------------------------------------------------------------------ float -> uint8


def adm_to_uint8(x: Tensor) -> Tensor:
    """ADM's conversion of samples in [-1, 1] to uint8 (``scripts/image_sample.py``):
    ``((x + 1) * 127.5).clamp(0, 255).to(torch.uint8)``, i.e. *truncation* toward zero, not rounding.

    So 1.0 -> 255 and -1.0 -> 0, but 255 is reached only at x = 1 exactly and every other level v covers
    ``[v / 127.5 - 1, (v + 1) / 127.5 - 1)``: the image is darker by half a level on average than with rounding
    (``data_images.to_uint8``). Computed in float32 (float64 input stays float64), as the sampling script on float32
    samples. NaN has no uint8 value (its cast is undefined): refused.
    """
    if not torch.is_floating_point(x):
        raise TypeError(f"adm_to_uint8 takes float samples in [-1, 1], got {x.dtype}")
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    if torch.isnan(x).any():
        raise ValueError(
            f"{int(torch.isnan(x).sum())} NaN value(s) in the samples: a diverged sampler cannot be "
            "evaluated; find the NaNs first (e.g. the solver's step count or guidance scale)"
        )
    return ((x + 1) * 127.5).clamp(0, 255).to(torch.uint8)


UINT8_CONVERSIONS = {
    "adm-truncate": adm_to_uint8,  # ((x + 1) * 127.5).clamp(0, 255) cast: ADM's sampling scripts
    "round": to_uint8,  # round((x + 1) * 127.5) clipped: this project's data_images.to_uint8
}
UNRECORDED = "unrecorded"


def to_adm_layout(images: Tensor | np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W) with C = 3 (this project's layout) -> uint8 (N, H, W, 3) numpy (the ADM batch layout)."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected uint8 RGB images (N, 3, H, W), got {tuple(x.shape)} {x.dtype}")
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def write_adm_batch(
    path: str | Path, images: np.ndarray, labels: np.ndarray | None = None, uint8_conversion: str | None = None
) -> None:
    """Write a sample batch the ADM way (``np.savez``: ``arr_0`` images, ``arr_1`` labels when given), plus the
    ``uint8_conversion`` key (one of ``UINT8_CONVERSIONS``) when known."""
    images = np.asarray(images)
    _check_images_header(Path(path), images.shape, images.dtype)
    arrays = [images] if labels is None else [images, np.asarray(labels)]
    if labels is not None and np.asarray(labels).shape != images.shape[:1]:
        raise ValueError(f"labels of shape {np.asarray(labels).shape} do not match {len(images)} images")
    extra = {}
    if uint8_conversion is not None:
        if uint8_conversion not in UINT8_CONVERSIONS:
            raise ValueError(f"uint8_conversion must be one of {list(UINT8_CONVERSIONS)}, got {uint8_conversion!r}")
        extra["uint8_conversion"] = np.array(uint8_conversion)
    np.savez(path, *arrays, **extra)


# ----------------------------------------------------------------------------------------------------- reading


def _check_images_header(path: Path, shape: tuple, dtype: np.dtype) -> None:
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
        hint = " (channels first? the ADM layout is channels last)" if len(shape) == 4 and shape[1] == 3 else ""
        raise ValueError(
            f"{path}: arr_0 must be uint8 RGB images (N, H, W, 3), got shape {tuple(shape)} dtype {dtype}{hint}"
        )
    if shape[0] == 0:
        raise ValueError(f"{path}: arr_0 holds no images")


@dataclass(frozen=True)
class AdmBatchInfo:
    """What an ADM-layout ``.npz`` holds, read from its headers only."""

    path: Path
    num_images: int
    height: int
    width: int
    keys: tuple[str, ...]
    uint8_conversion: str  # a key of UINT8_CONVERSIONS, or "unrecorded"

    @property
    def has_statistics(self) -> bool:
        return "mu" in self.keys


def _npy_header(f) -> tuple[tuple, bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"npy format version {version} is not supported; save the batch with np.savez")


def _open_zip(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is an empty file: write the batch again")
    try:
        return zipfile.ZipFile(path, "r")
    except zipfile.BadZipFile:
        raise ValueError(f"{path} is not an .npz file (not a zip archive); save the batch with np.savez") from None


def read_adm_batch_info(path: str | Path) -> AdmBatchInfo:
    """Check an ADM-layout batch (``arr_0`` uint8 (N, H, W, 3), N > 0; ``arr_1`` (N,) integers if present) from its
    headers and return what it holds. Raises ``ValueError`` naming the file and the problem."""
    path = Path(path)
    with _open_zip(path) as z:
        keys = tuple(n.removesuffix(".npy") for n in z.namelist())
        if "arr_0" not in keys:
            hint = (
                " This looks like a gmflow-bench sample set: write it with adm_batches.write_adm_batch"
                "(path, to_adm_layout(images), labels)."
                if "images" in keys
                else ""
            )
            raise ValueError(f"{path}: no arr_0 (images) in the npz, only {list(keys)}.{hint}")
        with z.open("arr_0.npy") as f:
            shape, _, dtype = _npy_header(f)
        _check_images_header(path, shape, dtype)
        if "arr_1" in keys:
            with z.open("arr_1.npy") as f:
                lshape, _, ldtype = _npy_header(f)
            if lshape != shape[:1] or ldtype.kind not in "iu":
                raise ValueError(
                    f"{path}: arr_1 (labels) must be integers of shape ({shape[0]},), got {lshape} {ldtype}"
                )
        conversion = UNRECORDED
        if "uint8_conversion" in keys:
            with z.open("uint8_conversion.npy") as f:
                conversion = str(np.load(f))
    return AdmBatchInfo(path, int(shape[0]), int(shape[1]), int(shape[2]), keys, conversion)


def iter_adm_images(path: str | Path, batch_size: int) -> Iterator[np.ndarray]:
    """uint8 (B, H, W, 3) batches of ``arr_0`` in file order, read from the archive without loading it whole."""
    info = read_adm_batch_info(path)
    frame = info.height * info.width * 3
    with _open_zip(info.path) as z, z.open("arr_0.npy") as f:
        shape, fortran, _ = _npy_header(f)
        if fortran:  # rare: np.save of a Fortran-ordered array; read it whole
            images = np.load(info.path)["arr_0"]
            for i in range(0, len(images), batch_size):
                yield np.ascontiguousarray(images[i : i + batch_size])
            return
        for begin in range(0, info.num_images, batch_size):
            n = min(batch_size, info.num_images - begin)
            data = f.read(n * frame)
            if len(data) != n * frame:
                raise ValueError(
                    f"{info.path}: arr_0 is truncated at image {begin + len(data) // frame} of "
                    f"{info.num_images}; write the batch again"
                )
            yield np.frombuffer(bytearray(data), dtype=np.uint8).reshape(n, info.height, info.width, 3)  # writable


STAT_SHAPES = {"mu": (2048,), "sigma": (2048, 2048), "mu_s": (2023,), "sigma_s": (2023, 2023)}


def read_reference_statistics(path: str | Path) -> dict[str, np.ndarray]:
    """The stored statistics of a reference batch (``mu``, ``sigma`` and, if present, ``mu_s``, ``sigma_s``), or {}.

    Checked: each mean comes with its covariance and every array has the shape of the TF-Inception layers."""
    path = Path(path)
    with np.load(path) as f:
        stats = {k: f[k] for k in STAT_SHAPES if k in f.files}
    for mean, cov in (("mu", "sigma"), ("mu_s", "sigma_s")):
        if (mean in stats) != (cov in stats):
            raise ValueError(
                f"{path}: holds {mean if mean in stats else cov} without "
                f"{cov if mean in stats else mean}; a reference batch stores both or neither"
            )
    for k, v in stats.items():
        if v.shape != STAT_SHAPES[k] or not np.isfinite(v).all():
            raise ValueError(
                f"{path}: {k} must be finite with shape {STAT_SHAPES[k]} (TF-Inception "
                f"{'pool3' if k in ('mu', 'sigma') else 'mixed_6/conv[..., :7]'}), got {v.shape}"
            )
    return stats
