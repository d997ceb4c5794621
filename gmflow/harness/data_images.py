"""Image datasets, all local: Fashion-MNIST from its gzipped IDX files, scikit-learn's 8x8 digits, and CIFAR-10 from
its binary version in a folder the user passes.

Every loader returns ``images`` uint8 ``(N, C, H, W)`` and ``labels`` int64 ``(N,)``; ``load_images`` turns them into
the network's units, float32 in ``[-1, 1]`` (``to_unit_range`` / ``to_uint8`` convert between the two). Nothing is
downloaded: Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``) or from a folder the user passes, and digits ship inside scikit-learn (the tiny
dataset of tests and CI).
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

# ---------------------------------------------------------------------------------------------------------- IDX files

# IDX type byte -> big-endian numpy dtype (LeCun's MNIST format: magic = 0, 0, type, ndim; then ndim uint32 sizes).
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open_maybe_gzip(path: Path):
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (gzipped or not) into an array of its shape and (native-endian) dtype."""
    path = Path(path)
    try:
        with _open_maybe_gzip(path) as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # a truncated or corrupt gzip stream
        raise ValueError(f"{path} cannot be read ({type(e).__name__}: {e}); the file is truncated or corrupt: "
                         "fetch it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file: its first bytes are {raw[:4]!r}, expected 00 00 <type> <ndim>")
    dtype, ndim = np.dtype(IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: header says shape {shape} ({expected} bytes of data), file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray, compress: bool = True) -> None:
    """Write ``array`` as an IDX file (gzipped when ``compress``); the inverse of ``read_idx``."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}; use one of {sorted(str(d) for d in codes)}")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + array.astype(IDX_DTYPES[code]).tobytes()
    Path(path).write_bytes(gzip.compress(data, mtime=0) if compress else data)


# ------------------------------------------------------------------------------------------------------ Fashion-MNIST

FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_SIZES = {"train": 60000, "test": 10000}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def fashion_mnist_dir(root: str | Path | None = None) -> Path:
    """The folder holding the four Fashion-MNIST IDX files: ``root`` if given, else the Debian package's folder.

    Raises:
        FileNotFoundError: naming the folder, the missing files and how to get them.
    """
    folder = Path(root) if root is not None else FASHION_MNIST_DEBIAN_DIR
    names = [n for pair in FASHION_MNIST_FILES.values() for n in pair]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found: {folder} lacks {', '.join(missing)}. Either install the Debian package with "
            f"`apt-get install dataset-fashion-mnist` (it puts the files in {FASHION_MNIST_DEBIAN_DIR}), or pass the "
            f"folder that holds the four gzipped IDX files {', '.join(names)} (as published by Zalando Research)."
        )
    return folder


def load_fashion_mnist(split: str = "train", root: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST ``split`` ("train": 60000, "test": 10000): uint8 ``(N, 1, 28, 28)`` and int64 labels in 0..9."""
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; choose one of {sorted(FASHION_MNIST_FILES)}")
    folder = fashion_mnist_dir(root)
    image_file, label_file = FASHION_MNIST_FILES[split]
    images, labels = read_idx(folder / image_file), read_idx(folder / label_file)
    if images.ndim != 3 or images.dtype != np.uint8 or labels.shape != images.shape[:1]:
        raise ValueError(
            f"{folder}: {image_file} has shape {images.shape} {images.dtype} and {label_file} shape {labels.shape}; "
            "expected uint8 (N, 28, 28) images and (N,) labels"
        )
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


# ------------------------------------------------------------------------------------------------------------- digits

DIGITS_TEST_FRACTION = 0.2


def load_digits(split: str = "train", test_fraction: float = DIGITS_TEST_FRACTION,
                root: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """scikit-learn's digits (1797 images, 8x8, gray levels 0..16): uint8 ``(N, 1, 8, 8)`` and int64 labels in 0..9.

    Gray levels map to uint8 by ``round(v * 255 / 16)``. The split is fixed and uses no random numbers: the test set is
    the last ``round(test_fraction * n_c)`` images of each class ``c`` in file order (by default 1438 train / 359 test),
    so later writers are held out.
    """
    from sklearn.datasets import load_digits as _sklearn_digits

    if root is not None:
        raise ValueError(f"digits ship inside scikit-learn and take no data root (got {str(root)!r}); leave "
                         "--data-root / images.data_root unset")
    if split not in ("train", "test", "all"):
        raise ValueError(f"unknown digits split {split!r}; choose 'train', 'test' or 'all'")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bunch = _sklearn_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    labels = bunch.target.astype(np.int64)
    is_test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        is_test[idx[len(idx) - int(round(test_fraction * len(idx))) :]] = True
    keep = {"train": ~is_test, "test": is_test, "all": np.ones_like(is_test)}[split]
    return torch.from_numpy(images[keep]), torch.from_numpy(labels[keep])


# ----------------------------------------------------------------------------------------------------------- CIFAR-10

CIFAR10_BIN_DIR = "cifar-10-batches-bin"  # what cifar-10-binary.tar.gz extracts to
CIFAR10_FILES = {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)}
CIFAR10_SIZES = {"train": 50000, "test": 10000}
CIFAR10_SHAPE = (3, 32, 32)
CIFAR10_RECORD = 1 + 3 * 32 * 32  # 1 label byte, then the R, G and B planes, each 32 x 32 row-major
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
_GET_CIFAR10_BIN = (f"download the binary version ({CIFAR10_URL}, 'CIFAR-10 binary version (suitable for C "
                    f"programs)' on the CIFAR page), extract it with `tar xzf cifar-10-binary.tar.gz` and pass the "
                    f"folder that holds {CIFAR10_BIN_DIR}/ (or that folder itself) as --data-root (config "
                    "images.data_root); docs/cifar10.md")


def read_cifar10_bin(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse one file of the CIFAR-10 binary version: uint8 images ``(N, 3, 32, 32)`` and int64 labels ``(N,)``.

    A file is ``N`` records of 3073 bytes: the label (0..9), then 1024 red, 1024 green and 1024 blue bytes, each plane
    row-major, which is already the channel-first layout. Read with numpy only (never a pickle).

    Raises:
        ValueError: the size is not a positive multiple of 3073 bytes (truncated, or not the binary version), or a
            label is outside 0..9.
    """
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % CIFAR10_RECORD:
        raise ValueError(f"{path} has {raw.size} bytes, not a whole number of {CIFAR10_RECORD}-byte records (1 label "
                         f"byte + 3072 pixel bytes): the file is truncated or is not CIFAR-10's binary version; "
                         f"{_GET_CIFAR10_BIN}")
    records = raw.reshape(-1, CIFAR10_RECORD)  # (N, 3073)
    labels = records[:, 0].astype(np.int64)  # (N,)
    if labels.max() >= len(CIFAR10_CLASSES):
        bad = int(np.flatnonzero(labels >= len(CIFAR10_CLASSES))[0])
        raise ValueError(f"{path}: record {bad} has label {labels[bad]}, outside 0..9: the file is not a CIFAR-10 "
                         f"binary batch (CIFAR-100's binary version has 2 label bytes per record)")
    return records[:, 1:].reshape(-1, *CIFAR10_SHAPE), labels  # (N, 3, 32, 32) uint8, (N,) int64


def write_cifar10_bin(path: str | Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write uint8 ``(N, 3, 32, 32)`` images and labels in 0..9 as a CIFAR-10 binary file (the inverse of
    :func:`read_cifar10_bin`; tests and synthetic data)."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8 or images.shape[1:] != CIFAR10_SHAPE or labels.shape != images.shape[:1]:
        raise ValueError(f"expected uint8 images (N, 3, 32, 32) and labels (N,), got {images.shape} {images.dtype} "
                         f"and {labels.shape}")
    if labels.size and not 0 <= labels.min() <= labels.max() < len(CIFAR10_CLASSES):
        raise ValueError(f"labels must lie in 0..9, got {labels.min()}..{labels.max()}")
    records = np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(len(images), -1)], axis=1)
    Path(path).write_bytes(records.tobytes())


def write_synthetic_cifar10(folder: str | Path, num_train: int = 500, num_test: int = 100, seed: int = 0) -> Path:
    """Write a synthetic stand-in for CIFAR-10 in its binary layout: ``folder/cifar-10-batches-bin/`` with the five
    training batches (``num_train`` images split as evenly as possible) and the test batch.

    Image ``i`` of class ``c = i mod 10`` is a colour ramp of the class's colour plus noise (so that features differ
    by class), all from numpy's generator of ``seed``. For tests and the CPU smoke run only; its FIDs mean nothing.
    """
    if num_train < 5 or num_test < 1:
        raise ValueError(f"need at least 5 training images (one per batch file) and 1 test image, got {num_train} and "
                         f"{num_test}")
    rng = np.random.default_rng(seed)
    out = Path(folder) / CIFAR10_BIN_DIR
    out.mkdir(parents=True, exist_ok=True)
    colours = rng.uniform(40, 215, size=(len(CIFAR10_CLASSES), 3, 1, 1))  # (10, 3, 1, 1)
    ramp = np.linspace(-30, 30, 32)[None, None, :] + np.zeros((1, 32, 1))  # (1, 32, 32): left to right

    def images(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        labels = index % len(CIFAR10_CLASSES)
        x = colours[labels] + ramp[None] + rng.normal(0, 20, size=(len(index), *CIFAR10_SHAPE))  # (n, 3, 32, 32)
        return np.clip(np.rint(x), 0, 255).astype(np.uint8), labels

    for i, part in enumerate(np.array_split(np.arange(num_train), 5)):
        write_cifar10_bin(out / CIFAR10_FILES["train"][i], *images(part))
    write_cifar10_bin(out / CIFAR10_FILES["test"][0], *images(np.arange(num_test)))
    return out


def cifar10_dir(root: str | Path | None) -> Path:
    """The folder of the CIFAR-10 binary files: ``root/cifar-10-batches-bin`` if it exists, else ``root``.

    Raises:
        FileNotFoundError: no root was given, or files are missing; the message says how to get the binary version,
            and names the python version when that is what the folder holds (it is a pickle, never loaded here).
    """
    if root is None:
        raise FileNotFoundError(f"CIFAR-10 has no standard place on this machine and is never downloaded at run "
                                f"time: {_GET_CIFAR10_BIN}")
    root = Path(root)
    folder = root / CIFAR10_BIN_DIR if (root / CIFAR10_BIN_DIR).is_dir() else root
    names = [n for split in CIFAR10_FILES.values() for n in split]
    missing = [n for n in names if not (folder / n).is_file()]
    if not missing:
        return folder
    pickles = [p for p in (root / "cifar-10-batches-py", root) if (p / "data_batch_1").is_file()]
    if pickles:
        raise FileNotFoundError(f"{pickles[0]} holds the python version of CIFAR-10 (pickled batches), which this "
                                f"project never loads: unpickling a file can run arbitrary code. Instead, "
                                f"{_GET_CIFAR10_BIN}")
    raise FileNotFoundError(f"CIFAR-10 not found: {folder} lacks {', '.join(missing)}; {_GET_CIFAR10_BIN}")


def load_cifar10(split: str = "train", root: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """CIFAR-10 ``split`` ("train": the 5 data batches, 50000; "test": 10000) from the binary version in ``root``:
    uint8 ``(N, 3, 32, 32)`` and int64 labels in 0..9, in file order."""
    if split not in CIFAR10_FILES:
        raise ValueError(f"unknown CIFAR-10 split {split!r}; choose one of {sorted(CIFAR10_FILES)}")
    folder = cifar10_dir(root)
    parts = [read_cifar10_bin(folder / name) for name in CIFAR10_FILES[split]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(images), torch.from_numpy(labels)


# ------------------------------------------------------------------------------------------------ units and registry


def to_unit_range(images: Tensor) -> Tensor:
    """uint8 ``[0, 255]`` -> float32 ``[-1, 1]``: ``x = v / 127.5 - 1``."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    return images.float() / 127.5 - 1.0


def check_uint8_images(images: Tensor | np.ndarray) -> Tensor:
    """``images`` as a uint8 ``(N, C, H, W)`` tensor (a numpy array is wrapped); anything else is refused."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images (N, C, H, W), got {tuple(images.shape)} {images.dtype}")
    return images


def batch_slices(n: int, batch_size: int):
    """Slices of ``range(n)`` in order, ``batch_size`` long (the last one shorter)."""
    for i in range(0, n, batch_size):
        yield slice(i, min(i + batch_size, n))


def to_uint8(x: Tensor) -> Tensor:
    """float ``[-1, 1]`` -> uint8, the inverse of ``to_unit_range``: ``round((x + 1) * 127.5)`` clipped to 0..255."""
    return ((x.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def pad_images(images: Tensor, size: int) -> Tensor:
    """Zero-pad uint8 ``(N, C, H, W)`` images symmetrically to ``size x size`` (e.g. 28 -> 32 for patch sizes 4 or 8).

    Zero is the black background of Fashion-MNIST and digits (``-1`` in ``[-1, 1]`` units).
    """
    h, w = images.shape[-2:]
    if size < h or size < w or (size - h) % 2 or (size - w) % 2:
        raise ValueError(f"cannot pad {h}x{w} images symmetrically to {size}x{size}")
    ph, pw = (size - h) // 2, (size - w) // 2
    return torch.nn.functional.pad(images, (pw, pw, ph, ph), value=0)


@dataclass(frozen=True)
class ImageDataset:
    """A registered image dataset: its uint8 loader and its shape.

    ``conditional`` False: the labels are read (for the feature classifier and class-stratified reference sets) but
    runs on it are unconditional. ``hflip``: training batches are mirrored left-right with probability 1/2.
    """

    name: str
    loader: Callable[..., tuple[Tensor, Tensor]]  # (split, root=None) -> (uint8 (N, C, H, W), int64 (N,))
    channels: int
    resolution: int
    num_classes: int
    splits: tuple[str, ...] = ("train", "test")
    conditional: bool = True
    hflip: bool = False

    def load_uint8(self, split: str = "train", root: str | Path | None = None) -> tuple[Tensor, Tensor]:
        return self.loader(split, root)


IMAGE_DATASETS = {
    "fashion-mnist": ImageDataset("fashion-mnist", lambda split, root=None: load_fashion_mnist(split, root), 1, 28, 10),
    "digits": ImageDataset("digits", lambda split, root=None: load_digits(split, root=root), 1, 8, 10),
    # unconditional as in the paper's Table 5; random flips as in DDPM's CIFAR-10 training
    "cifar10": ImageDataset("cifar10", load_cifar10, 3, 32, 10, conditional=False, hflip=True),
}


def load_images_uint8(name: str, split: str = "train", root: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """uint8 ``(N, C, H, W)`` images and int64 ``(N,)`` labels of the registered dataset ``name``."""
    if name not in IMAGE_DATASETS:
        raise ValueError(f"unknown image dataset {name!r}; choose one of {sorted(IMAGE_DATASETS)}")
    ds = IMAGE_DATASETS[name]
    if split not in ds.splits:
        raise ValueError(f"unknown split {split!r} of {name}; choose one of {list(ds.splits)}")
    images, labels = ds.load_uint8(split, root)
    check_image_arrays(images, labels, ds, f"{name} {split} split" + (f" in {root}" if root else ""))
    return images, labels


def check_image_arrays(images: Tensor, labels: Tensor, ds: ImageDataset, where: str) -> None:
    """Refuse loaded data that does not fit its registered dataset: empty, another image size, labels out of range."""
    shape = (ds.channels, ds.resolution, ds.resolution)
    if len(images) == 0:
        raise ValueError(f"{where}: no images")
    if tuple(images.shape[1:]) != shape:
        raise ValueError(f"{where}: images of shape {tuple(images.shape[1:])}, but {ds.name} is {shape} (C, H, W)")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"{where}: {len(images)} images but labels of shape {tuple(labels.shape)}")
    if ds.num_classes and (labels.min() < 0 or labels.max() >= ds.num_classes):
        raise ValueError(f"{where}: labels in [{int(labels.min())}, {int(labels.max())}], but {ds.name} has classes "
                         f"0..{ds.num_classes - 1}")


def load_images(
    name: str, split: str = "train", root: str | Path | None = None, pad_to: int | None = None
) -> tuple[Tensor, Tensor]:
    """Training units: float32 images ``(N, C, H, W)`` in ``[-1, 1]`` and int64 labels ``(N,)``.

    Args:
        name: a key of ``IMAGE_DATASETS``.
        split: "train" or "test".
        root: folder of the dataset's files where it has any (Fashion-MNIST); default its standard place.
        pad_to: zero-pad (black) to this square size, e.g. 32; default ``None`` keeps the native size.
    """
    images, labels = load_images_uint8(name, split, root)
    if pad_to is not None:
        images = pad_images(images, pad_to)
    return to_unit_range(images), labels


def stratified_order(labels: torch.Tensor) -> torch.Tensor:
    """Indices that visit the classes round-robin (file order within a class), so that any prefix is class-balanced
    (up to the smallest class)."""
    per_class = [np.flatnonzero(labels.numpy() == c) for c in np.unique(labels.numpy())]
    order = [i for group in zip(*per_class, strict=False) for i in group]
    return torch.as_tensor(order, dtype=torch.long)
