"""Latent image datasets: an ImageFolder of images encoded once by a Stable-Diffusion VAE into a cache of latents.

The paper's ImageNet 256x256 experiment (Sec. 4.2; docs/method.md) trains on ``z = 0.18215 * (one posterior sample of
the SD-VAE encoder)`` of each training image, 4x32x32, cached before training. The preparation follows the paper's
code:

- ADM centre crop (:func:`center_crop_adm`): halve with a box filter while the short side is at least twice the
  resolution, bicubic resize so that the short side equals it, then crop the centre; RGB.
- Horizontal flip: decided ONCE per image at caching time with probability 1/2 (the paper's data preparation draws
  the dataset's random flip while it encodes, and the cache holds that one copy); the training loop never flips.
  Here the flip of image ``i`` comes from the stream ``(seed, i, 1)``, so the cache is reproducible.
- Posterior sample: ``z_i = (mean_i + std_i * eps_i) * scaling_factor`` with ``eps_i`` from the stream
  ``(seed, i)``: the cache does not depend on the batch size or the device (up to floating-point error).

Cache layout (a folder)::

    shard-00000.safetensors   latents (n, C, h, w) float16, labels (n,) int64; metadata: first index, count, key
    shard-00001.safetensors   ...
    index.json                count, class names, resolution, latent shape, VAE id / variant / sha1, scaling factor,
                              dtype, seed, shard size, flip rule; written last, so its presence means "complete"

Shard ``s`` holds images ``[s * shard_size, (s + 1) * shard_size)`` of the sorted file list. A shard is written
atomically, and one whose metadata key matches the current settings is kept, so a killed encode resumes at the first
missing shard.

Latents are stored as float16 by default: half the disk and memory of float32 (ImageNet: 1.28M x 4x32x32 is 10.5 GB
instead of 21 GB, so the whole cache fits in a training node's memory), and float16 keeps 11 significant bits
(relative error <= 2^-11 ~ 4.9e-4), finer than the bfloat16 autocast (8 bits) in which the network reads its input.
The paper's code stores float32 files; ``dtype="float32"`` does the same.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gmflow.harness.seeding import stream_generator

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".jpe", ".tif", ".tiff")
SD_VAE_SCALING_FACTOR = 0.18215  # Rombach et al. 2022; used when a VAE config has no scaling_factor
INDEX_FILE = "index.json"
LATENT_DTYPES = {"float16": torch.float16, "float32": torch.float32}
FLIP_RULE = "random horizontal flip, once per image at caching time, p = 1/2, stream (seed, index, 1)"


class LatentDataError(ValueError):
    """Bad input to the latent pipeline (empty folder, unreadable image, missing VAE), said in one line."""


# ------------------------------------------------------------------------------------------------------- ImageFolder


@dataclass(frozen=True)
class ImageFolder:
    """An ImageFolder layout: ``root/<class>/<image>``; classes sorted by name get labels ``0 .. C-1``."""

    root: Path
    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def fingerprint(self) -> str:
        """sha1 of the relative paths and labels (not the pixels): changes when images are added or moved."""
        h = hashlib.sha1()
        for p, y in zip(self.paths, self.labels, strict=True):
            h.update(f"{p.relative_to(self.root).as_posix()}\t{y}\n".encode())
        return h.hexdigest()


def scan_image_folder(root: str | Path) -> ImageFolder:
    """The images of an ImageFolder layout in a fixed order (class name, then file name).

    Raises:
        LatentDataError: the folder is missing, has no class folders, or a class folder holds no image.
    """
    root = Path(root)
    if not root.is_dir():
        raise LatentDataError(f"image folder {root} does not exist; pass the folder that holds one sub-folder per "
                              "class (ImageNet: the train folder with n01440764/, n01443537/, ...)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise LatentDataError(f"image folder {root} is empty: it has no class sub-folders (expected "
                              f"{root}/<class>/<image>.JPEG)")
    paths, labels = [], []
    for y, name in enumerate(classes):
        files = sorted(f for f in (root / name).iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise LatentDataError(f"class folder {root / name} holds no image (extensions "
                                  f"{', '.join(IMAGE_EXTENSIONS)}); remove it or add its images")
        paths += files
        labels += [y] * len(files)
    return ImageFolder(root, tuple(paths), tuple(labels), tuple(classes))


def center_crop_adm(image, resolution: int) -> np.ndarray:
    """ADM's centre crop (Dhariwal & Nichol 2021, ``center_crop_arr``) of a PIL image: uint8 ``(R, R, 3)``.

    1. While the short side is ``>= 2 R``: halve both sides (integer division) with a box filter.
    2. Bicubic resize by ``R / short side`` (each side rounded), so the short side becomes ``R``.
    3. Crop ``R x R`` at offset ``((H - R) // 2, (W - R) // 2)``.

    The image is converted to RGB first (grayscale and CMYK JPEGs occur in ImageNet).
    """
    from PIL import Image

    image = image.convert("RGB")
    while min(*image.size) >= 2 * resolution:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = resolution / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - resolution) // 2, (arr.shape[1] - resolution) // 2
    return np.ascontiguousarray(arr[top : top + resolution, left : left + resolution])


def read_image(path: Path, resolution: int) -> np.ndarray:
    """The ADM centre crop of the image file ``path`` (raises :class:`LatentDataError` when it cannot be read)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return center_crop_adm(im, resolution)
    except (UnidentifiedImageError, OSError) as e:
        raise LatentDataError(f"cannot read image {path}: {e}; remove or replace the file") from None


def flips(seed: int, indices) -> list[bool]:
    """The caching-time horizontal flip of each image index (p = 1/2 from stream ``(seed, i, 1)``)."""
    return [bool(torch.rand((), generator=stream_generator(seed, int(i), 1)) < 0.5) for i in indices]


def posterior_noise(seed: int, indices, shape: tuple[int, ...]) -> Tensor:
    """``eps_i ~ N(0, I)`` of shape ``shape`` per image index from stream ``(seed, i)``: ``(len(indices), *shape)``."""
    return torch.stack([torch.randn(shape, generator=stream_generator(seed, int(i))) for i in indices])


def reference_batch(folder: ImageFolder, resolution: int, num_images: int | None) -> tuple[np.ndarray, np.ndarray]:
    """A reference batch the ADM way: uint8 NHWC ADM centre crops (no flip) of a class-balanced prefix of the folder
    (classes visited round-robin), and their labels."""
    from gmflow.harness.data_images import stratified_order

    order = stratified_order(torch.tensor(folder.labels)).tolist()
    order = order[: num_images or len(order)]
    images = np.stack([read_image(folder.paths[i], resolution) for i in order])
    return images, np.asarray([folder.labels[i] for i in order], dtype=np.int64)


# ---------------------------------------------------------------------------------------------------------------- VAE


@dataclass(frozen=True)
class VAEInfo:
    """Which VAE encoded a cache: its id (folder or hub id), variant (``ema``/``mse`` for the SD VAEs), sha1 of its
    weights (of the loaded tensors, so independent of the file format) and scaling factor."""

    id: str
    variant: str
    sha1: str
    scaling_factor: float

    def record(self) -> dict:
        return {"vae": self.id, "vae_variant": self.variant, "vae_sha1": self.sha1,
                "scaling_factor": self.scaling_factor}


def vae_variant(vae_id: str) -> str:
    """``ema`` / ``mse`` for stabilityai/sd-vae-ft-ema / -mse (read from the id or folder name), else ``other``."""
    name = Path(vae_id).name.lower()
    return "ema" if "ema" in name else "mse" if "mse" in name else "other"


def weights_sha1(module: torch.nn.Module) -> str:
    """sha1 of a module's state dict (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha1()
    for key, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_vae(vae: str | Path, device: torch.device | str = "cpu", variant: str | None = None):
    """A ``diffusers.AutoencoderKL`` from a local folder (``save_pretrained`` layout) or, if the Hugging Face cache
    already holds it, a hub id; never downloads. Returns ``(vae in eval mode, VAEInfo)``.

    Raises:
        LatentDataError: the folder lacks config.json, or the hub id is not in the local cache.
    """
    from diffusers import AutoencoderKL

    vae_id = str(vae)
    path = Path(vae_id)
    how = ("fetch it by hand, e.g. `huggingface-cli download stabilityai/sd-vae-ft-ema --local-dir DIR`, and pass "
           "that folder")
    if path.exists():
        if not (path / "config.json").is_file():
            raise LatentDataError(f"VAE folder {path} has no config.json: it is not a diffusers AutoencoderKL folder; "
                                  f"{how}")
        model = AutoencoderKL.from_pretrained(str(path), local_files_only=True, low_cpu_mem_usage=False)
    else:
        if vae_id.startswith((".", "/", "~")) or vae_id.count("/") != 1:
            raise LatentDataError(f"VAE {vae_id!r} is missing: no such folder; {how}")
        try:
            model = AutoencoderKL.from_pretrained(vae_id, local_files_only=True, low_cpu_mem_usage=False)
        except OSError:
            raise LatentDataError(f"VAE {vae_id!r} is not a local folder and not in the Hugging Face cache "
                                  f"(nothing is downloaded at run time); {how}") from None
    scaling = float(getattr(model.config, "scaling_factor", None) or SD_VAE_SCALING_FACTOR)
    info = VAEInfo(vae_id, variant or vae_variant(vae_id), weights_sha1(model), scaling)
    return model.eval().requires_grad_(False).to(device), info


# ------------------------------------------------------------------------------------------------------------- encode


def _shard_path(out: Path, s: int) -> Path:
    return out / f"shard-{s:05d}.safetensors"


def _shard_is_done(path: Path, key: str) -> bool:
    from safetensors import safe_open

    if not path.is_file():
        return False
    with safe_open(str(path), "pt") as f:
        return (f.metadata() or {}).get("key") == key


def encode_image_folder(
    image_root: str | Path,
    vae: str | Path,
    out: str | Path,
    *,
    resolution: int = 256,
    batch_size: int = 32,
    shard_size: int = 10000,
    device: str = "auto",
    dtype: str = "float16",
    seed: int = 0,
    variant: str | None = None,
    progress: bool = True,
    limit_shards: int | None = None,
) -> dict:
    """Encode every image of an ImageFolder into a latent cache at ``out`` (see the module docstring); resumable.

    Args:
        image_root: ImageFolder root (``root/<class>/<image>``).
        vae: a local AutoencoderKL folder or a hub id already in the local Hugging Face cache.
        out: the cache folder.
        resolution: ADM centre-crop size R (latents are ``R / 8`` for the SD VAE).
        batch_size: images per VAE call (changes nothing in the cache but speed and memory).
        shard_size: images per shard file (the unit of resuming).
        device: ``auto``, ``cpu``, ``cuda[:N]`` or ``mps`` (gmflow/harness/devices.py).
        dtype: ``float16`` (default) or ``float32`` storage of the latents; the VAE itself runs in float32.
        seed: seed of the flips and the posterior noise.
        variant: the VAE variant to record (default: read from its id, ``ema`` / ``mse``).
        limit_shards: stop after writing this many new shards (to test resuming); None = all.

    Returns:
        the index (also written to ``out/index.json`` once every shard exists).
    """
    from tqdm import tqdm

    from gmflow.harness import io
    from gmflow.harness.devices import resolve_device

    if dtype not in LATENT_DTYPES:
        raise LatentDataError(f"latent dtype must be one of {sorted(LATENT_DTYPES)}, got {dtype!r}")
    if resolution < 8 or batch_size < 1 or shard_size < 1:
        raise LatentDataError(f"resolution >= 8, batch size and shard size >= 1 needed; got {resolution}, "
                              f"{batch_size}, {shard_size}")
    folder = scan_image_folder(image_root)
    dev = resolve_device(device)
    model, info = load_vae(vae, dev, variant)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / INDEX_FILE).unlink(missing_ok=True)  # incomplete until the last shard is written
    settings = {"images": folder.fingerprint(), "vae_sha1": info.sha1, "resolution": resolution, "dtype": dtype,
                "seed": seed, "shard_size": shard_size, "flip": FLIP_RULE}
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    n = len(folder)
    num_shards = (n + shard_size - 1) // shard_size
    todo = [s for s in range(num_shards) if not _shard_is_done(_shard_path(out, s), key)]
    pbar = tqdm(total=n, initial=n - sum(min(shard_size, n - s * shard_size) for s in todo), unit="img",
                desc=f"encode {folder.root.name}", disable=not progress, mininterval=5)
    latent_shape = None
    for written, s in enumerate(todo):
        if limit_shards is not None and written >= limit_shards:
            pbar.close()
            return {"complete": False, "shards_written": written}
        idx = range(s * shard_size, min(n, (s + 1) * shard_size))
        chunks = []
        for b in range(idx.start, idx.stop, batch_size):
            ids = list(range(b, min(idx.stop, b + batch_size)))
            pix = np.stack([read_image(folder.paths[i], resolution) for i in ids])  # (B, R, R, 3) uint8
            pix = np.stack([p[:, ::-1] if f else p for p, f in zip(pix, flips(seed, ids), strict=True)])
            x = torch.from_numpy(np.ascontiguousarray(pix)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            with torch.no_grad():
                post = model.encode(x.to(dev)).latent_dist  # diagonal Gaussian posterior
                mean, std = post.mean.float().cpu(), post.std.float().cpu()  # (B, C, h, w)
            eps = posterior_noise(seed, ids, tuple(mean.shape[1:]))
            chunks.append(((mean + std * eps) * info.scaling_factor).to(LATENT_DTYPES[dtype]))
            pbar.update(len(ids))
        latents = torch.cat(chunks)
        latent_shape = list(latents.shape[1:])
        labels = torch.tensor([folder.labels[i] for i in idx], dtype=torch.int64)
        io.save_safetensors({"latents": latents, "labels": labels}, _shard_path(out, s),
                            {"key": key, "start": idx.start, "count": len(idx)})
    pbar.close()
    if latent_shape is None:  # every shard was already there
        latent_shape = list(_read_shard(_shard_path(out, 0))[0].shape[1:])
    index = {"count": n, "num_classes": len(folder.class_names), "class_names": list(folder.class_names),
             "resolution": resolution, "latent_shape": latent_shape, **info.record(), "dtype": dtype, "seed": seed,
             "shard_size": shard_size, "num_shards": num_shards, "flip": FLIP_RULE, "key": key,
             "image_root": str(folder.root.resolve()), "images_sha1": settings["images"]}
    io.write_json(index, out / INDEX_FILE)
    return {**index, "complete": True}


# --------------------------------------------------------------------------------------------------------------- read


def _read_shard(path: Path) -> tuple[Tensor, Tensor]:
    from safetensors.torch import load_file

    t = load_file(str(path))
    return t["latents"], t["labels"]


def read_latent_index(root: str | Path) -> dict:
    """The ``index.json`` of a complete latent cache (raises :class:`LatentDataError` naming what to run)."""
    p = Path(root) / INDEX_FILE
    if not p.is_file():
        raise LatentDataError(f"{root} is not a complete latent cache ({INDEX_FILE} is missing): run "
                              "`gmflow-bench images encode-latents --image-root DIR --vae VAE --out "
                              f"{root}` (it resumes where it stopped)")
    return json.loads(p.read_text())


def load_latent_cache(root: str | Path) -> tuple[Tensor, Tensor, dict]:
    """All latents ``(N, C, h, w)`` in their stored dtype, labels ``(N,)`` int64 and the index of a cache.

    Memory: the shards are read into one tensor, so this needs RAM equal to the cache size (ImageNet at 256:
    1,281,167 x 4x32x32 float16 = 10.5 GB, plus one shard while concatenating). The training loop converts each
    batch to float32 (``x[idx].float()``), never the whole set.
    """
    index = read_latent_index(root)
    root = Path(root)
    parts = [_read_shard(_shard_path(root, s)) for s in range(index["num_shards"])]
    latents = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    if len(latents) != index["count"]:
        raise LatentDataError(f"latent cache {root}: the shards hold {len(latents)} latents but {INDEX_FILE} says "
                              f"{index['count']}; encode it again")
    return latents, labels, index


# ------------------------------------------------------------------------------------------------------------- decode


def decode_latents(z: Tensor | np.ndarray, vae_model, scaling_factor: float, batch_size: int = 32) -> Tensor:
    """Sampled latents (the sampler's output, in units of ``scaling_factor * VAE latent``) -> uint8 RGB
    ``(N, 3, H, W)``: ``decode(z / scaling_factor)``, then ``[-1, 1] -> [0, 255]`` rounded and clipped."""
    from gmflow.harness.data_images import to_uint8

    z = torch.as_tensor(z, dtype=torch.float32)
    dev = next(vae_model.parameters()).device
    out = []
    with torch.no_grad():
        for b in range(0, len(z), batch_size):
            x = vae_model.decode(z[b : b + batch_size].to(dev) / scaling_factor).sample
            out.append(to_uint8(x.float().cpu()))
    return torch.cat(out) if out else torch.zeros((0, 3, 0, 0), dtype=torch.uint8)


def write_toy_image_folder(root: str | Path, num_classes: int = 4, per_class: int = 8, size: tuple[int, int] = (64, 80),
                           seed: int = 0) -> Path:
    """Write a toy ImageFolder of JPEGs (``class{c}/img{i}.jpg``, ``size`` = (H, W)): a smooth class-coloured blob on
    a noisy background, for tests and the smoke configuration."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    for c in range(num_classes):
        (Path(root) / f"class{c}").mkdir(parents=True, exist_ok=True)
        colour = np.array([(c * 97) % 256, (c * 57 + 80) % 256, (c * 151 + 160) % 256], dtype=np.float64)
        for i in range(per_class):
            cy, cx, r = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w, rng.uniform(0.15, 0.3) * min(h, w)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
            img = blob * colour + (1 - blob) * rng.uniform(0, 255, (h, w, 3))
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(Path(root) / f"class{c}" / f"img{i}.jpg",
                                                                    quality=90)
    return Path(root)


def save_tiny_vae(path: str | Path, seed: int = 0, num_down: int = 4, channels: int = 8) -> Path:
    """Write a tiny randomly initialised ``AutoencoderKL`` (4 latent channels, ``2^(num_down-1)`` downsampling) with
    ``save_pretrained``: the stand-in for the SD VAE in tests and the smoke configuration (its images mean nothing)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * num_down, up_block_types=("UpDecoderBlock2D",) * num_down,
        block_out_channels=(channels,) * num_down, scaling_factor=SD_VAE_SCALING_FACTOR,
    )
    vae.save_pretrained(str(path))
    return Path(path)
