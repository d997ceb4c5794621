"""Run folders: the spec in ``run.json`` that names a network, building that network, and loading trained weights.

A spec holds ``network`` (a registry key), ``method`` (``gmflow`` or ``fm``: the GM or the velocity head),
``num_components``, ``dataset``, ``sample_shape`` and ``num_classes``, plus the network family's own fields (the 2D
MLP's ``width``, ``depth`` and ``min_period``, the finest period of its position features: a record without
``min_period``, written before it was a setting, has the paper's 0.005; a DiT's optional ``patch_size``, ``depth``,
``width``, ``num_heads`` overrides and ``spectral``, whether a SpectrumMLP is trained beside it; a U-Net's
``spectral`` alone). A run imported from another code base also records its whole DiT architecture as
``architecture``, a dict of :class:`gmflow.harness.dit.DiTConfig` fields over the variant's
(gmflow/harness/official.py). Builders are looked up by network key.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from gmflow.harness import io, registry
from gmflow.harness.datasets import dataset_info

DIT_OVERRIDES = ("patch_size", "depth", "width", "num_heads")


def _head(method: str) -> str:
    if method not in registry.METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {registry.METHODS}")
    return "gm" if method == "gmflow" else "velocity"


def mlp2d_min_period(spec: dict) -> float:
    """The finest position-feature period of a 2D MLP's spec; records written before it was a setting have none and
    used the paper's value."""
    from gmflow.harness.mlp2d import MIN_PERIOD

    return float(spec.get("min_period", MIN_PERIOD))


def _build_mlp2d(spec: dict) -> tuple[nn.Module, None]:
    from gmflow.harness.mlp2d import MLP2D

    net = MLP2D(_head(spec["method"]), max(spec["num_components"], 1), spec["width"], spec["depth"],
                min_period=mlp2d_min_period(spec))
    return net, None


def _build_dit(spec: dict) -> tuple[nn.Module, nn.Module | None]:
    from gmflow.harness.dit import build_dit

    overrides = {**(spec.get("architecture") or {}), **{k: spec[k] for k in DIT_OVERRIDES if spec.get(k) is not None}}
    if spec.get("dataset") in registry.LATENT_DATASETS:  # the class count is the cache's (e.g. a few classes in tests)
        overrides["num_classes"] = spec["num_classes"]
    net = build_dit(spec["network"], _head(spec["method"]), max(spec["num_components"], 1), **overrides)
    return _fitted(net, spec, "gmflow/harness/dit.py DIT_VARIANTS")


def _build_unet(spec: dict) -> tuple[nn.Module, nn.Module | None]:
    from gmflow.harness.unet import build_unet

    net = build_unet(spec["network"], _head(spec["method"]), max(spec["num_components"], 1))
    return _fitted(net, spec, "gmflow/harness/unet.py UNET_VARIANTS")


def _fitted(net: nn.Module, spec: dict, variants: str) -> tuple[nn.Module, nn.Module | None]:
    """``net`` checked against the spec's sample shape and class count, and the run's SpectrumMLP if it has one."""
    c, h, w = spec["sample_shape"]
    if (net.config.in_channels, *net.input_hw) != (c, h, w) or net.config.num_classes != spec["num_classes"]:
        raise ValueError(
            f"network {spec['network']!r} takes {net.config.in_channels}x{net.input_hw} images with "
            f"{net.config.num_classes} classes, but dataset {spec['dataset']!r} has {c}x{(h, w)} and "
            f"{spec['num_classes']} classes; pick a matching network (see {variants})"
        )
    spectrum = None
    if spec.get("spectral"):
        from gmflow.spectral import SpectrumMLP

        spectrum = SpectrumMLP(c, base_size=max(h, w))
    return net, spectrum


BUILDERS = {"mlp2d": _build_mlp2d, **{key: _build_dit for key in registry.IMAGE_NETWORKS}}
BUILDERS.update({key: _build_unet for key in registry.UNET_NETWORKS})


def build_network(spec: dict) -> tuple[nn.Module, nn.Module | None]:
    """The network of a run spec and its SpectrumMLP (None when the run trains none)."""
    if spec["network"] not in BUILDERS:
        raise ValueError(f"unknown network {spec['network']!r}; choose one of {sorted(BUILDERS)}")
    return BUILDERS[spec["network"]](spec)


def network_spec(dataset: str, network: str, method: str, num_components: int = 0, *, width: int = 256,
                 depth: int = 3, min_period: float | None = None, spectral: bool = False, dit: dict | None = None,
                 data_root: str | None = None) -> dict:
    """The spec of a ``network`` for ``dataset``, checked against each other.

    ``width`` and ``depth`` size the 2D MLP and ``min_period`` is the finest period of its position features (None:
    the paper's 0.005; :class:`gmflow.harness.mlp2d.MLP2D`); ``dit`` holds a DiT's overrides (``patch_size``,
    ``depth``, ``width``, ``num_heads``; None keeps the variant's). ``spectral`` (DiT of a GMFlow run) trains a
    SpectrumMLP beside it. A latent dataset takes its class count and latent shape from its cache at ``data_root``,
    and the spec keeps the cache's index as ``latents`` (which VAE decodes the samples).
    """
    info = dataset_info(dataset, data_root)
    if network not in info.networks:
        raise ValueError(f"dataset {dataset!r} takes one of the networks {list(info.networks)}, not {network!r}")
    if spectral and method != "gmflow":
        raise ValueError("spectral sampling needs a GM model: --spectral applies to method 'gmflow' only")
    spec = {"network": network, "method": method, "num_components": num_components if method == "gmflow" else 0,
            "dataset": dataset, "sample_shape": list(info.sample_shape), "num_classes": info.num_classes}
    if network == "mlp2d":
        from gmflow.harness.mlp2d import MIN_PERIOD

        if spectral:
            raise ValueError("--spectral applies to DiT networks of image datasets only")
        return {**spec, "width": width, "depth": depth, "min_period": MIN_PERIOD if min_period is None else min_period}
    if min_period is not None:
        raise ValueError(f"--min-period sets the 2D MLP's position features; network {network!r} has none")
    if getattr(info, "latents", None) is not None:
        spec["latents"] = info.latents
    if network in registry.UNET_NETWORKS:
        given = sorted(k for k, v in (dit or {}).items() if v is not None)
        if given:
            raise ValueError(f"{given} override a DiT's shape; {network!r} is a U-Net (gmflow/harness/unet.py)")
        return {**spec, "spectral": bool(spectral)}
    return {**spec, "spectral": bool(spectral), **{k: (dit or {}).get(k) for k in DIT_OVERRIDES}}


def read_spec(run_dir: str | Path, what: str = "train the run first") -> dict:
    p = Path(run_dir) / "run.json"
    if not p.exists():
        raise FileNotFoundError(f"{run_dir} has no run.json: {what}")
    try:
        spec = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p} is not valid JSON ({e}); {what}") from None
    keys = ("network", "method")  # every run record (LFM blocks too) names its network and method
    missing = [k for k in keys if k not in spec] if isinstance(spec, dict) else list(keys)
    if missing:
        raise ValueError(f"{p} is not a run record of this project (missing {missing}); {what}")
    return spec


def load_run(run_dir: str | Path) -> tuple[nn.Module, nn.Module | None, dict]:
    """The EMA network of a trained run (eval mode), its EMA SpectrumMLP if it has one, and its spec."""
    run_dir = Path(run_dir)
    spec = read_spec(run_dir, "train the run first (gmflow-bench ... train)")
    net, spectrum = build_network(spec)
    _load_weights(net, run_dir / "ema.safetensors", spec)
    if spectrum is not None:
        _load_weights(spectrum, run_dir / "spectrum_ema.safetensors", spec)
        spectrum.eval()
    return net.eval(), spectrum, spec


def _load_weights(module: nn.Module, path: Path, spec: dict) -> None:
    """Load ``path`` into ``module``; weights of another network (K, width, method, ...) raise one clear error."""
    state = io.load_safetensors(path)
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).split("\n\t")[1:2] or [str(e)[:200]]
        raise ValueError(f"{path} does not fit the network of run.json ({spec['network']}, method {spec['method']}, "
                         f"K = {spec['num_components']}): {first[0].strip()}; the weights belong to another run"
                         ) from None
