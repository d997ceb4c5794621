"""Import the authors' published GM-DiT checkpoint into a run folder of this project (docs/official_checkpoint.md).

The published model (``Lakonik/gmflow_imagenet_k8_ema``, ImageNet 256, K = 8) is a diffusers pipeline snapshot:
``transformer/`` (the GM-DiT), ``spectrum_net/`` (the SpectrumMLP), ``vae/`` (the SD VAE) and ``scheduler/``, each
with a ``config.json`` (``scheduler_config.json`` for the scheduler) and ``diffusion_pytorch_model[.bf16].safetensors``.
:func:`import_official` turns ``transformer/`` and ``spectrum_net/`` into ``run.json`` + ``ema.safetensors`` +
``spectrum_ema.safetensors``, which :func:`gmflow.harness.runs.load_run` loads like a trained run. Only safetensors
are read: a pickle checkpoint (``.bin``, ``.pt``, ...) can run code when loaded and is refused.

Facts of the official code this conversion relies on, as read in the GMFlow repository:

- Classes. ``lib/pipelines/gmdit_pipeline.py`` (``GMDiTPipeline``) loads ``transformer/`` as
  ``_GMDiTTransformer2DModel`` and ``spectrum_net/`` as ``_SpectrumMLP``, both in
  ``lib/models/architecture/gmflow.py``. The transformer subclasses diffusers' ``DiTTransformer2DModel`` but builds
  its own embedding, blocks (``BasicTransformerBlockMod``) and GM head (``GMOutput2D``). Its defaults, overridden by
  ``configs/gmflow_imagenet_k8_8gpus.py``: K (``num_gaussians``) = 8, 16 heads x 72 = width 1152, 28 layers,
  ``sample_size`` 32, patch 2, 4 channels, ``num_embeds_ada_norm`` 1000, ``logstd_inner_dim`` 1024,
  ``gm_num_logstd_layers`` 2, ``activation_fn`` ``gelu-approximate``, ``norm_eps`` 1e-5, attention bias on.
- Patch embedding ``pos_embed`` (diffusers ``PatchEmbed``): ``pos_embed.proj`` is a Conv2d ``(D, C, p, p)`` with
  stride p, the same map as this project's Linear over ``(C, p, p)``-ordered patches. The fixed 2D sin-cos position
  embedding (first half of the features embeds the column, second half the row, ``omega_i = 10000^(-2i/(D/2))``) is
  a non-persistent buffer, so it is not in the state dict.
- One conditioning ``emb`` shared by every block and the final layer (``CombinedTimestepLabelEmbeddingsMod``):
  ``c = t_emb + y_emb``; ``t_emb = emb.timestep_embedder.linear_2(SiLU(emb.timestep_embedder.linear_1(sinusoid(t))))``
  with the 256-d sinusoid of diffusers ``Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)`` (``[cos,
  sin]``, frequencies ``10000^(-i/128)``, computed in float32); ``y_emb = emb.class_embedder.embedding_table[y]``,
  a table of ``num_embeds_ada_norm + 1`` = 1001 rows whose last row, 1000, is the null class (the pipeline's
  ``class_null``). Label dropout acts in training only.
- Block ``transformer_blocks.{i}``: ``norm1.linear`` (D -> 6D) on ``SiLU(c)``, chunked in the order (shift, scale,
  gate) for attention then (shift, scale, gate) for the MLP (diffusers ``AdaLayerNormZero``, whose LayerNorm has no
  affine and eps 1e-6); attention ``attn1.to_q``, ``attn1.to_k``, ``attn1.to_v`` (D -> D each, with bias; features
  head-major, heads of ``attention_head_dim``; softmax scale ``1/sqrt(head_dim)``) and ``attn1.to_out.0`` (D -> D);
  ``x += gate * attn``; then ``norm3``, a LayerNorm without affine whose eps is the config's ``norm_eps`` (1e-5 by
  default, not 1e-6), modulated by the MLP's (shift, scale); MLP ``ff.net.0.proj`` (D -> 4D), GELU (tanh),
  ``ff.net.2`` (4D -> D); ``x += gate * mlp``. There is no ``norm2``/``attn2``.
- Final layer: ``norm_out`` (LayerNorm, no affine, eps 1e-6); ``proj_out_1`` (D -> 2D) on ``SiLU(c)`` gives (shift,
  scale); ``proj_out_2`` (D -> ``p p K (C + 1)``). Its output is unpatchified by ``reshape(B, h, w, p, p, G)
  .permute(0, 5, 1, 3, 2, 4)``, so the rows of ``proj_out_2`` are ordered (row in patch, column in patch, channel)
  with the channel fastest, whereas this project orders them (channel, row in patch, column in patch)
  (:func:`gmflow.harness.dit.unpatchify`): the one re-layout of the conversion (:func:`patch_rows_to_channel_rows`).
- GM head ``GMOutput2D``: the ``G = K (C + 1)`` channels split into ``K C`` means viewed ``(B, K, C, H, W)`` and
  ``K`` logits, log-softmaxed over K into logweights ``(B, K, 1, H, W)``: the same layout as this project's.
  ``logstds (B, 1, 1, 1, 1) = gm_out.logstd_layers(c.detach())`` with ``logstd_layers = (SiLU, Linear(D, 1024),
  SiLU, Linear(1024, 1))``, i.e. keys ``gm_out.logstd_layers.1`` and ``.3`` (``constant_logstd`` None).
- Time and output. The schedulers (``lib/models/diffusions/schedulers/flow_euler_ode.py``, ``gmflow_sde.py``) give
  ``timesteps = sigma * num_train_timesteps`` (1000), continuous; training (``lib/models/diffusions/
  gaussian_flow.py``) draws ``x_t = (1 - sigma) x_0 + sigma eps`` with ``sigma = t / 1000``; the pipeline turns the
  output into x0 space by ``x_t - sigma * means`` and ``logstds + log(sigma)`` (``GMFlowPipelineMixin.u_to_x_0``),
  so the network predicts the GM of ``u = eps - x_0`` at ``t = 1000 sigma``: this project's convention
  (docs/method.md, Sec. 1.2). No time or output conversion is needed.
- SpectrumMLP (``_SpectrumMLP``, config ``base_size = (C, H, W)``, ``layers = [64, 8]``): ``mlp.0`` Linear(2, 64),
  SiLU, ``mlp.2`` Linear(64, 8), SiLU, ``mlp.4`` Linear(8, C H W); inputs (mean of the surrogate variance, spatial
  unbiased variance of the surrogate mean averaged over channels); log-softmax over the H W frequencies plus
  ``log(H W)``. Same keys and the same map as :class:`gmflow.spectral.SpectrumMLP` at its base size.

So this project's DiT differs from the official one only by a weight re-layout (fused ``qkv``, ``proj_out_2``'s row
order, the patch Conv2d as a Linear, module names) and by the eps of the LayerNorm in front of each MLP, which the
``mlp_norm_eps`` field of :class:`gmflow.harness.dit.DiTConfig` (variant ``gmdit-xl-2-official``) reproduces.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from gmflow.harness import io
from gmflow.harness.dit import DiT, DiTConfig, build_dit, sincos_2d

NETWORK = "gmdit-xl-2-official"
COMPONENTS = ("transformer", "spectrum_net")
WEIGHTS = "diffusion_pytorch_model"  # diffusers' file stem; a variant inserts ".{variant}" before ".safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# The dataset an official snapshot is bound to: ImageNet 256 as SD-VAE latents (C, H, W) and its class count.
DATASET_SHAPES = {"imagenet256": ((4, 32, 32), 1000)}
# What the official training config (configs/gmflow_imagenet_k8_8gpus.py) says; the released EMA's step is not stated.
OFFICIAL_TRAIN = {"steps": None, "trans_ratio": 0.5, "time_sampler": "logit-normal"}

# Official transformer config fields that must hold for the conversion to be exact, and their defaults in
# _GMDiTTransformer2DModel.__init__ (used when config.json omits a field).
_REQUIRED = {"norm_type": "ada_norm_zero", "activation_fn": "gelu-approximate", "attention_bias": True,
             "norm_elementwise_affine": False, "constant_logstd": None, "gm_num_logstd_layers": 2}
_DEFAULTS = {"num_gaussians": 16, "logstd_inner_dim": 1024, "num_attention_heads": 16, "attention_head_dim": 72,
             "in_channels": 4, "out_channels": None, "num_layers": 28, "sample_size": 32, "patch_size": 2,
             "num_embeds_ada_norm": 1000, "norm_eps": 1e-5, **_REQUIRED}


# ----------------------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------------------


def dit_config_from_official(config: dict, source: str = "transformer/config.json") -> tuple[DiTConfig, int]:
    """The :class:`DiTConfig` and K of an official transformer ``config.json`` (its fields are listed above).

    Raises:
        ValueError: naming ``source``, the field, its value and the expected one, for a config this conversion does
            not reproduce exactly (another head, activation or norm).
    """
    cfg = {**_DEFAULTS, **config}
    for key, expected in _REQUIRED.items():
        if cfg[key] != expected:
            raise ValueError(f"{source}: {key} = {cfg[key]!r}, expected {expected!r}; only the published GM-DiT "
                             "layout (lib/models/architecture/gmflow.py, _GMDiTTransformer2DModel) can be imported")
    ints = ("num_gaussians", "logstd_inner_dim", "num_attention_heads", "attention_head_dim", "in_channels",
            "num_layers", "sample_size", "patch_size", "num_embeds_ada_norm")
    for key in ints:
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise ValueError(f"{source}: {key} = {cfg[key]!r}, expected a positive integer")
    if cfg["out_channels"] not in (None, cfg["in_channels"]):
        raise ValueError(f"{source}: out_channels = {cfg['out_channels']!r}, expected null or in_channels "
                         f"({cfg['in_channels']}): the GM means live in the input's channels")
    eps = cfg["norm_eps"]
    if not isinstance(eps, int | float) or isinstance(eps, bool) or not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"{source}: norm_eps = {eps!r}, expected a positive number (1e-5 in the published model)")
    heads, head_dim = cfg["num_attention_heads"], cfg["attention_head_dim"]
    dit = DiTConfig(input_size=cfg["sample_size"], in_channels=cfg["in_channels"], patch_size=cfg["patch_size"],
                    depth=cfg["num_layers"], width=heads * head_dim, num_heads=heads,
                    num_classes=cfg["num_embeds_ada_norm"], mlp_ratio=4.0, logstd_hidden=cfg["logstd_inner_dim"],
                    frequency_dim=256, mlp_norm_eps=float(eps))
    return dit, cfg["num_gaussians"]


def check_spectrum_config(config: dict, dit: DiTConfig, source: str = "spectrum_net/config.json") -> None:
    """Check that an official SpectrumMLP ``config.json`` is what :class:`gmflow.spectral.SpectrumMLP` builds for
    ``dit``'s images: ``base_size = [C, H, W]`` of the latents and hidden ``layers = [64, 8]``."""
    size = dit.input_size
    expected = [dit.in_channels, size, size]
    base = list(config.get("base_size", (4, 32, 32)))
    if base != expected:
        raise ValueError(f"{source}: base_size = {base}, expected {expected} (the transformer's latent shape)")
    layers = list(config.get("layers", (64, 8)))
    if layers != [64, 8]:
        raise ValueError(f"{source}: layers = {layers}, expected [64, 8] (the SpectrumMLP of docs/method.md, Sec. 2.3)")


# ----------------------------------------------------------------------------------------------------------------------
# State dicts
# ----------------------------------------------------------------------------------------------------------------------


def official_transformer_shapes(config: DiTConfig, num_components: int) -> dict[str, tuple[int, ...]]:
    """Every key of the official transformer's state dict and its shape, for ``config`` and K."""
    d, c, p, h_std = config.width, config.in_channels, config.patch_size, config.logstd_hidden
    hidden, g = int(d * config.mlp_ratio), num_components * (c + 1)
    shapes = {
        "pos_embed.proj.weight": (d, c, p, p), "pos_embed.proj.bias": (d,),
        "emb.timestep_embedder.linear_1.weight": (d, config.frequency_dim), "emb.timestep_embedder.linear_1.bias": (d,),
        "emb.timestep_embedder.linear_2.weight": (d, d), "emb.timestep_embedder.linear_2.bias": (d,),
        "emb.class_embedder.embedding_table.weight": (config.num_classes + 1, d),
        "proj_out_1.weight": (2 * d, d), "proj_out_1.bias": (2 * d,),
        "proj_out_2.weight": (p * p * g, d), "proj_out_2.bias": (p * p * g,),
        "gm_out.logstd_layers.1.weight": (h_std, d), "gm_out.logstd_layers.1.bias": (h_std,),
        "gm_out.logstd_layers.3.weight": (1, h_std), "gm_out.logstd_layers.3.bias": (1,),
    }
    for i in range(config.depth):
        b = f"transformer_blocks.{i}."
        shapes.update({b + "norm1.linear.weight": (6 * d, d), b + "norm1.linear.bias": (6 * d,)})
        for name in ("to_q", "to_k", "to_v", "to_out.0"):
            shapes.update({f"{b}attn1.{name}.weight": (d, d), f"{b}attn1.{name}.bias": (d,)})
        shapes.update({b + "ff.net.0.proj.weight": (hidden, d), b + "ff.net.0.proj.bias": (hidden,),
                       b + "ff.net.2.weight": (d, hidden), b + "ff.net.2.bias": (d,)})
    return shapes


def official_spectrum_shapes(num_channels: int, base_size: int) -> dict[str, tuple[int, ...]]:
    """Every key of the official SpectrumMLP's state dict and its shape (hidden layers 64, 8)."""
    out = num_channels * base_size * base_size
    return {"mlp.0.weight": (64, 2), "mlp.0.bias": (64,), "mlp.2.weight": (8, 64), "mlp.2.bias": (8,),
            "mlp.4.weight": (out, 8), "mlp.4.bias": (out,)}


def check_state(state: dict[str, Tensor], shapes: dict[str, tuple[int, ...]], source: str,
                optional: tuple[str, ...] = ()) -> None:
    """Refuse a state dict with a missing key, an unexpected key, a wrong shape or a non-float tensor.

    Raises:
        ValueError: naming ``source``, the key, what was seen and what was expected.
    """
    missing = [k for k in shapes if k not in state]
    if missing:
        raise ValueError(f"{source}: key {missing[0]!r} is missing ({len(missing)} missing in all), expected a tensor "
                         f"of shape {list(shapes[missing[0]])}; the snapshot is incomplete or not the published GM-DiT")
    unexpected = [k for k in state if k not in shapes and k not in optional]
    if unexpected:
        raise ValueError(f"{source}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in all: "
                         f"{unexpected[:4]}); the weights do not match the architecture of its config.json")
    for key, shape in shapes.items():
        t = state[key]
        if tuple(t.shape) != shape:
            raise ValueError(f"{source}: key {key!r} has shape {list(t.shape)}, expected {list(shape)} from "
                             "config.json; the weights and the config do not belong together")
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{source}: key {key!r} has dtype {t.dtype}, expected a floating point tensor")
        if not torch.isfinite(t).all():
            raise ValueError(f"{source}: key {key!r} holds non-finite values; download the file again")


def patch_rows_to_channel_rows(w: Tensor, patch_size: int) -> Tensor:
    """Reorder the output rows of ``proj_out_2`` from the official (row in patch, column in patch, channel) order to
    this project's (channel, row in patch, column in patch) order.

    Args:
        w: weight ``(p p G, D)`` or bias ``(p p G,)``, the channel fastest.

    Returns:
        the same values, ``(G p p, D)`` or ``(G p p,)``, the column in patch fastest.
    """
    p = patch_size
    rows = w.reshape(p, p, -1, *w.shape[1:])  # (p, p, G, ...)
    return rows.movedim(2, 0).reshape(w.shape)  # (G, p, p, ...) -> (G p p, ...)


def convert_transformer(state: dict[str, Tensor], config: DiTConfig, num_components: int,
                        source: str = "transformer") -> dict[str, Tensor]:
    """The state dict of this project's :class:`gmflow.harness.dit.DiT` (GM head) for an official one, in float32.

    The official state is checked first (:func:`check_state`); a ``pos_embed.pos_embed`` buffer, if a snapshot
    carries one, must equal the fixed sin-cos embedding this project computes.
    """
    check_state(state, official_transformer_shapes(config, num_components), source, optional=("pos_embed.pos_embed",))
    if "pos_embed.pos_embed" in state:
        grid = config.input_size // config.patch_size
        ours = sincos_2d((grid, grid), config.width)[None]  # (1, N, D)
        theirs = state["pos_embed.pos_embed"].float()
        if theirs.shape != ours.shape or not torch.allclose(theirs, ours, atol=1e-2):
            raise ValueError(f"{source}: key 'pos_embed.pos_embed' differs from the 2D sin-cos position embedding "
                             f"{list(ours.shape)} (column features first); this is not the published layout")
    s = {k: v.float() for k, v in state.items()}
    d, p = config.width, config.patch_size
    out = {
        "x_embedder.weight": s["pos_embed.proj.weight"].reshape(d, -1),  # (D, C, p, p) -> (D, C p p)
        "x_embedder.bias": s["pos_embed.proj.bias"],
        "t_embedder.0.weight": s["emb.timestep_embedder.linear_1.weight"],
        "t_embedder.0.bias": s["emb.timestep_embedder.linear_1.bias"],
        "t_embedder.2.weight": s["emb.timestep_embedder.linear_2.weight"],
        "t_embedder.2.bias": s["emb.timestep_embedder.linear_2.bias"],
        "y_embedder.weight": s["emb.class_embedder.embedding_table.weight"],
        "final_layer.adaLN_modulation.weight": s["proj_out_1.weight"],
        "final_layer.adaLN_modulation.bias": s["proj_out_1.bias"],
        "final_layer.linear.weight": patch_rows_to_channel_rows(s["proj_out_2.weight"], p),
        "final_layer.linear.bias": patch_rows_to_channel_rows(s["proj_out_2.bias"], p),
        "logstd_mlp.1.weight": s["gm_out.logstd_layers.1.weight"],
        "logstd_mlp.1.bias": s["gm_out.logstd_layers.1.bias"],
        "logstd_mlp.3.weight": s["gm_out.logstd_layers.3.weight"],
        "logstd_mlp.3.bias": s["gm_out.logstd_layers.3.bias"],
    }
    for i in range(config.depth):
        b, o = f"transformer_blocks.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{o}adaLN_modulation.{kind}"] = s[f"{b}norm1.linear.{kind}"]
            # fused qkv: rows [q; k; v], each head-major as in the separate projections
            out[f"{o}attn.qkv.{kind}"] = torch.cat([s[f"{b}attn1.to_{n}.{kind}"] for n in "qkv"], dim=0)
            out[f"{o}attn.proj.{kind}"] = s[f"{b}attn1.to_out.0.{kind}"]
            out[f"{o}mlp.0.{kind}"] = s[f"{b}ff.net.0.proj.{kind}"]
            out[f"{o}mlp.2.{kind}"] = s[f"{b}ff.net.2.{kind}"]
    return {k: v.contiguous() for k, v in out.items()}


def convert_spectrum(state: dict[str, Tensor], num_channels: int, base_size: int,
                     source: str = "spectrum_net") -> dict[str, Tensor]:
    """The state dict of :class:`gmflow.spectral.SpectrumMLP` for an official one (the same keys), in float32."""
    check_state(state, official_spectrum_shapes(num_channels, base_size), source)
    return {k: v.float().contiguous() for k, v in state.items()}


# ----------------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------------


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; a missing or malformed file is refused naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; the snapshot is incomplete (download the whole repository)")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); download it again") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a JSON {type(obj).__name__}, expected an object of config fields")
    return obj


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """All tensors of one safetensors file; a truncated or foreign file is refused naming it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise ValueError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e}); it is truncated or "
                         "in another format: download it again") from None


def weight_files(folder: Path, variant: str | None) -> list[Path]:
    """The safetensors file(s) of one pipeline component: ``diffusion_pytorch_model[.{variant}].safetensors``, or the
    shards listed by its ``.safetensors.index[.{variant}].json``. Without the variant's file, the full-precision one
    is used (the record names the file read). Pickle checkpoints are never read.

    Raises:
        ValueError: when the folder holds only pickle checkpoints.
        FileNotFoundError: when it holds no weights at all.
    """
    tags = [f".{variant}", ""] if variant else [""]
    names = [f"{WEIGHTS}{tag}.safetensors" for tag in tags]
    indices = [f"{WEIGHTS}.safetensors.index{tag}.json" for tag in tags]
    for name, index in zip(names, indices, strict=True):
        if (folder / name).is_file():
            return [folder / name]
        if (folder / index).is_file():
            weight_map = read_json(folder / index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{folder / index}: 'weight_map' = {weight_map!r}, expected a map of keys to shards")
            shards = sorted(set(weight_map.values()))
            bad = [s for s in shards if not str(s).endswith(".safetensors")]
            if bad:
                raise ValueError(f"{folder / index} lists the shard {bad[0]!r}, expected .safetensors shards only "
                                 "(a pickle shard can run code when loaded)")
            for shard in shards:
                if not (folder / shard).is_file():
                    raise FileNotFoundError(f"{folder / shard} (a shard listed in {index}) does not exist; the "
                                            "snapshot is incomplete")
            return [folder / s for s in shards]
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES) if folder.is_dir() else []
    if pickles:
        raise ValueError(f"{folder} holds only pickle checkpoint(s) {pickles}, expected {names[0]}: this importer "
                         "reads safetensors only, because loading a pickle can run arbitrary code; download the "
                         ".safetensors files of the snapshot")
    raise FileNotFoundError(f"{folder} has no {' or '.join(names)}; the snapshot is incomplete (download the whole "
                            "repository)")


def read_component(snapshot: Path, component: str, variant: str | None) -> tuple[dict, dict[str, Tensor], list[Path]]:
    """``(config, state dict, files read)`` of one pipeline component folder of a snapshot."""
    folder = snapshot / component
    if not folder.is_dir():
        raise FileNotFoundError(f"{snapshot} has no {component}/ folder; pass the root of a downloaded "
                                "Lakonik/gmflow_imagenet_k8_ema snapshot (with transformer/ and spectrum_net/)")
    config = read_json(folder / "config.json")
    files = weight_files(folder, variant)
    state: dict[str, Tensor] = {}
    for f in files:
        state.update(read_safetensors(f))
    return config, state, [folder / "config.json", *files]


def import_official(snapshot: str | Path, out: str | Path, variant: str | None = None,
                    dataset: str | None = "imagenet256") -> dict:
    """Convert an official GM-DiT snapshot into a run folder ``out`` that :func:`gmflow.harness.runs.load_run` loads.

    Writes ``ema.safetensors`` (the DiT, float32), ``spectrum_ema.safetensors`` (the SpectrumMLP, float32),
    ``provenance.json`` and, last, ``run.json``: network ``gmdit-xl-2-official`` with the full ``architecture`` read
    from ``transformer/config.json``, method ``gmflow``, K, ``spectral`` true, ``sample_shape``, ``num_classes``,
    ``train`` (what the official config states) and ``imported_from`` (snapshot path, variant, SHA-256 of every file
    read, stored dtypes).

    Args:
        snapshot: root folder of a local snapshot (``transformer/``, ``spectrum_net/``, optional ``scheduler/``).
        out: the run folder to create; it must not hold a run already.
        variant: weight variant, e.g. ``"bf16"``; None reads the full-precision files.
        dataset: the dataset the run samples; ``"imagenet256"`` requires 4x32x32 latents and 1000 classes. None binds
            the run to no dataset (a snapshot of another shape, e.g. a test fixture).

    Returns:
        the run spec written to ``run.json``.
    """
    snapshot, out = Path(snapshot).resolve(), Path(out)
    if not snapshot.is_dir():
        raise FileNotFoundError(f"snapshot folder {snapshot} does not exist; download it first "
                                "(docs/official_checkpoint.md)")
    if variant is not None and (not variant or not variant.replace("_", "").isalnum()):
        raise ValueError(f"variant = {variant!r}, expected a file-name tag such as 'bf16'")
    if (out / "run.json").exists():
        raise ValueError(f"{out} already holds a run (run.json); choose another --out or delete that folder")
    if dataset is not None and dataset not in DATASET_SHAPES:
        raise ValueError(f"dataset = {dataset!r}: official snapshots exist for {sorted(DATASET_SHAPES)} only")

    t_cfg, t_state, t_files = read_component(snapshot, "transformer", variant)
    config, k = dit_config_from_official(t_cfg, str(t_files[0]))
    shape, num_classes = (config.in_channels, config.input_size, config.input_size), config.num_classes
    if dataset is not None and (shape, num_classes) != DATASET_SHAPES[dataset]:
        raise ValueError(f"{t_files[0]}: the model takes {list(shape)} latents with {num_classes} classes, but "
                         f"dataset {dataset!r} has {list(DATASET_SHAPES[dataset][0])} and "
                         f"{DATASET_SHAPES[dataset][1]}; this is not the ImageNet 256 checkpoint")
    s_cfg, s_state, s_files = read_component(snapshot, "spectrum_net", variant)
    check_spectrum_config(s_cfg, config, str(s_files[0]))
    files = t_files + s_files
    scheduler = snapshot / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():
        steps = read_json(scheduler).get("num_train_timesteps", 1000)
        if steps != 1000:
            raise ValueError(f"{scheduler}: num_train_timesteps = {steps!r}, expected 1000 (the network takes "
                             "t = 1000 sigma, docs/method.md Sec. 1.2)")
        files.append(scheduler)

    net_state = convert_transformer(t_state, config, k, str(t_files[-1]))
    spec_state = convert_spectrum(s_state, config.in_channels, config.input_size, str(s_files[-1]))
    from gmflow.spectral import SpectrumMLP

    with torch.device("meta"):  # structure only: strict loads find any missing or unexpected key, no memory used
        net: DiT = build_dit(NETWORK, "gm", k, **asdict(config))
        spectrum = SpectrumMLP(config.in_channels, base_size=config.input_size)
    net.load_state_dict(net_state, assign=True)
    spectrum.load_state_dict(spec_state, assign=True)

    spec = {
        "network": NETWORK, "method": "gmflow", "num_components": k, "dataset": dataset,
        "sample_shape": list(shape), "num_classes": num_classes, "spectral": True,
        "architecture": asdict(config), "train": dict(OFFICIAL_TRAIN),
        "imported_from": {
            "snapshot": str(snapshot), "variant": variant,
            "files": {str(f.relative_to(snapshot)): io.file_hash(f, "sha256") for f in files},
            "dtypes": {"transformer": sorted({str(v.dtype) for v in t_state.values()}),
                       "spectrum_net": sorted({str(v.dtype) for v in s_state.values()})},
            "class_names": {"transformer": t_cfg.get("_class_name"), "spectrum_net": s_cfg.get("_class_name")},
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    io.save_safetensors(net_state, out / "ema.safetensors")
    io.save_safetensors(spec_state, out / "spectrum_ema.safetensors")
    io.write_json(io.provenance(None, kind="import-official", imported_from=spec["imported_from"]),
                  out / "provenance.json")
    io.write_json(spec, out / "run.json")
    return spec
