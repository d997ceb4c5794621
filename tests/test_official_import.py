"""Import of the published GM-DiT snapshot (gmflow/harness/official.py, docs/official_checkpoint.md), at tiny scale.

A snapshot in the official diffusers layout (``transformer/`` and ``spectrum_net/``: ``config.json`` and
``diffusion_pytorch_model[.bf16].safetensors``) is written with random weights for a tiny configuration, converted,
and the converted network is compared with a float64 re-implementation of the official forward
(lib/models/architecture/gmflow.py of the GMFlow code base) written here over the official state dict. The layout
and the reference are themselves checked against diffusers' own building blocks, which the official model is made of.
"""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from gmflow.experiments.cli import main
from gmflow.gm import IsoGaussian
from gmflow.harness.official import import_official
from gmflow.harness.runs import load_run
from gmflow.harness.sampling import generate

# Tiny configuration: K = 3 (not C) so that a K/C mix-up shows, 2 heads x 32 = width 64, 2 layers, 4x8x8 latents,
# 5 classes (null = 5), the published norm_eps 1e-5.
K, C, SIZE, P, HEADS, HEAD_DIM, LAYERS, CLASSES, LOGSTD_HIDDEN, NORM_EPS = 3, 4, 8, 2, 2, 32, 2, 5, 16, 1e-5
D = HEADS * HEAD_DIM


def official_transformer_config(**changes) -> dict:
    """``transformer/config.json`` as diffusers writes it for _GMDiTTransformer2DModel (every __init__ argument)."""
    cfg = {"_class_name": "GMDiTTransformer2DModel", "_diffusers_version": "0.32.2", "num_gaussians": K,
           "constant_logstd": None, "logstd_inner_dim": LOGSTD_HIDDEN, "gm_num_logstd_layers": 2,
           "class_dropout_prob": 0.0, "num_attention_heads": HEADS, "attention_head_dim": HEAD_DIM, "in_channels": C,
           "out_channels": None, "num_layers": LAYERS, "dropout": 0.0, "norm_num_groups": 32, "attention_bias": True,
           "sample_size": SIZE, "patch_size": P, "activation_fn": "gelu-approximate", "num_embeds_ada_norm": CLASSES,
           "upcast_attention": False, "norm_type": "ada_norm_zero", "norm_elementwise_affine": False,
           "norm_eps": NORM_EPS}
    return {**cfg, **changes}


def official_spectrum_config() -> dict:
    return {"_class_name": "SpectrumMLP", "_diffusers_version": "0.32.2", "base_size": [C, SIZE, SIZE],
            "layers": [64, 8]}


def official_transformer_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under every key of the official module tree, scaled like a trained net (fan-in), adaLN and
    output layers NOT zero so that every path matters."""
    g = torch.Generator().manual_seed(seed)

    def lin(name, n_out, n_in):
        return {f"{name}.weight": torch.randn(n_out, n_in, generator=g) / math.sqrt(n_in),
                f"{name}.bias": 0.1 * torch.randn(n_out, generator=g)}

    gm_channels = K * (C + 1)
    s = {"pos_embed.proj.weight": torch.randn(D, C, P, P, generator=g) / math.sqrt(C * P * P),
         "pos_embed.proj.bias": 0.1 * torch.randn(D, generator=g),
         "emb.class_embedder.embedding_table.weight": torch.randn(CLASSES + 1, D, generator=g),
         **lin("emb.timestep_embedder.linear_1", D, 256), **lin("emb.timestep_embedder.linear_2", D, D),
         **lin("proj_out_1", 2 * D, D), **lin("proj_out_2", P * P * gm_channels, D),
         **lin("gm_out.logstd_layers.1", LOGSTD_HIDDEN, D), **lin("gm_out.logstd_layers.3", 1, LOGSTD_HIDDEN)}
    for i in range(LAYERS):
        b = f"transformer_blocks.{i}"
        s.update(lin(f"{b}.norm1.linear", 6 * D, D))
        for name in ("to_q", "to_k", "to_v", "to_out.0"):
            s.update(lin(f"{b}.attn1.{name}", D, D))
        s.update(lin(f"{b}.ff.net.0.proj", 4 * D, D))
        s.update(lin(f"{b}.ff.net.2", D, 4 * D))
    return s


def official_spectrum_state(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"mlp.0": (64, 2), "mlp.2": (8, 64), "mlp.4": (C * SIZE * SIZE, 8)}
    s = {}
    for name, (n_out, n_in) in shapes.items():
        s[f"{name}.weight"] = torch.randn(n_out, n_in, generator=g) / math.sqrt(n_in)
        s[f"{name}.bias"] = 0.1 * torch.randn(n_out, generator=g)
    return s


def write_snapshot(root: Path, transformer=None, spectrum=None, config=None, variant_dtype=None) -> Path:
    """A snapshot folder in the published file layout; ``variant_dtype`` also writes the ``.bf16`` transformer."""
    transformer = official_transformer_state() if transformer is None else transformer
    spectrum = official_spectrum_state() if spectrum is None else spectrum
    for folder, state, cfg in (("transformer", transformer, config or official_transformer_config()),
                               ("spectrum_net", spectrum, official_spectrum_config())):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "config.json").write_text(json.dumps(cfg))
        save_file(state, str(root / folder / "diffusion_pytorch_model.safetensors"))
    if variant_dtype is not None:
        save_file({k: v.to(variant_dtype) for k, v in transformer.items()},
                  str(root / "transformer" / "diffusion_pytorch_model.bf16.safetensors"))
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "GMFlowSDEScheduler", "num_train_timesteps": 1000, "shift": 1.0}))
    return root


# ----------------------------------------------------------------------------------------------------------------------
# Reference: the official forward, re-implemented in float64 from lib/models/architecture/gmflow.py
# ----------------------------------------------------------------------------------------------------------------------


def reference_pos_embed(h: int, w: int, dim: int) -> torch.Tensor:
    """diffusers get_2d_sincos_pos_embed: first half embeds the column (meshgrid with w first), second half the row."""
    def one_d(pos, d):
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2))
        out = pos.double()[:, None] * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.cat([one_d(cols.flatten(), dim // 2), one_d(rows.flatten(), dim // 2)], dim=1)  # (h w, dim)


def reference_timestep_sinusoid(t: torch.Tensor) -> torch.Tensor:
    """diffusers Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0), computed in float32 as there."""
    half = 128
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32) / half
    args = t.float()[:, None] * torch.exp(exponent)[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # flip_sin_to_cos: [cos, sin]


def reference_forward(state: dict, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                      norm_eps: float = NORM_EPS) -> dict[str, torch.Tensor]:
    """_GMDiTTransformer2DModel.forward in float64: ``{means (B,K,C,H,W), logweights (B,K,1,H,W), logstds}``."""
    s = {k: v.double() for k, v in state.items()}
    x = x.double()
    b, c, hh, ww = x.shape
    h, w = hh // P, ww // P

    def lin(v, name):
        return v @ s[f"{name}.weight"].T + s[f"{name}.bias"]

    def ln(v, eps):
        return (v - v.mean(-1, keepdim=True)) / torch.sqrt(v.var(-1, unbiased=False, keepdim=True) + eps)

    tokens = F.conv2d(x, s["pos_embed.proj.weight"], s["pos_embed.proj.bias"], stride=P)  # (B, D, h, w)
    tokens = tokens.flatten(2).transpose(1, 2) + reference_pos_embed(h, w, D)  # (B, N, D)
    t_emb = lin(F.silu(lin(reference_timestep_sinusoid(t).double(), "emb.timestep_embedder.linear_1")),
                "emb.timestep_embedder.linear_2")
    cond = t_emb + s["emb.class_embedder.embedding_table.weight"][y]  # (B, D)
    for i in range(LAYERS):
        blk = f"transformer_blocks.{i}"
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = lin(F.silu(cond), f"{blk}.norm1.linear").chunk(
            6, dim=1)
        a = ln(tokens, 1e-6) * (1 + scale_msa[:, None]) + shift_msa[:, None]
        q, k, v = (lin(a, f"{blk}.attn1.to_{n}").reshape(b, h * w, HEADS, HEAD_DIM).transpose(1, 2) for n in "qkv")
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(HEAD_DIM), dim=-1) @ v  # (B, heads, N, head_dim)
        tokens = tokens + gate_msa[:, None] * lin(att.transpose(1, 2).reshape(b, h * w, D), f"{blk}.attn1.to_out.0")
        m = ln(tokens, norm_eps) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        m = lin(F.gelu(lin(m, f"{blk}.ff.net.0.proj"), approximate="tanh"), f"{blk}.ff.net.2")
        tokens = tokens + gate_mlp[:, None] * m
    shift, scale = lin(F.silu(cond), "proj_out_1").chunk(2, dim=1)
    tokens = ln(tokens, 1e-6) * (1 + scale[:, None]) + shift[:, None]
    g = K * (C + 1)
    out = lin(tokens, "proj_out_2").reshape(b, h, w, P, P, g).permute(0, 5, 1, 3, 2, 4).reshape(b, g, hh, ww)
    means, logits = out.split([K * C, K], dim=1)
    logstds = lin(F.silu(lin(F.silu(cond), "gm_out.logstd_layers.1")), "gm_out.logstd_layers.3")
    return {"means": means.reshape(b, K, C, hh, ww),
            "logweights": logits.reshape(b, K, 1, hh, ww).log_softmax(dim=1),
            "logstds": logstds.reshape(b, 1, 1, 1, 1)}


def reference_spectrum(state: dict, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """_SpectrumMLP.forward at its base size in float64."""
    s = {k: v.double() for k, v in state.items()}
    stats = torch.stack([var.mean(dim=(-3, -2, -1)), mean.var(dim=(-2, -1)).mean(dim=-1)], dim=-1).double()
    z = stats
    for i in (0, 2):
        z = F.silu(z @ s[f"mlp.{i}.weight"].T + s[f"mlp.{i}.bias"])
    z = z @ s["mlp.4.weight"].T + s["mlp.4.bias"]
    b, c, h, w = mean.shape
    return (z.reshape(b, c, h * w).log_softmax(dim=-1) + math.log(h * w)).reshape(b, c, h, w)


def _inputs(b: int = 6, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, C, SIZE, SIZE, generator=g)
    t = torch.tensor([1000.0, 999.5, 731.25, 250.0, 12.5, 0.0])[:b]
    y = torch.tensor([0, CLASSES, 4, CLASSES, 2, 1])[:b]  # CLASSES = the null label
    return x, t, y


def _relclose(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-6) -> bool:
    return bool((a - b).abs().max() <= rtol * b.abs().max().clamp(min=1.0))


@pytest.fixture
def snapshot(tmp_path) -> Path:
    return write_snapshot(tmp_path / "snapshot")


@pytest.fixture
def run(snapshot, tmp_path) -> Path:
    import_official(snapshot, tmp_path / "run", dataset=None)
    return tmp_path / "run"


# ----------------------------------------------------------------------------------------------------------------------
# The fixture and the reference against diffusers' own modules
# ----------------------------------------------------------------------------------------------------------------------


def _diffusers_official_tree() -> nn.Module:
    """_GMDiTTransformer2DModel's module tree assembled from the diffusers modules it is built of (its __init__)."""
    from diffusers.models.attention import FeedForward
    from diffusers.models.attention_processor import Attention
    from diffusers.models.embeddings import CombinedTimestepLabelEmbeddings, PatchEmbed, Timesteps
    from diffusers.models.normalization import AdaLayerNormZero

    root = nn.Module()
    root.pos_embed = PatchEmbed(height=SIZE, width=SIZE, patch_size=P, in_channels=C, embed_dim=D)
    root.emb = CombinedTimestepLabelEmbeddings(CLASSES, D, class_dropout_prob=0.1)  # 0.1: the table gets the null row
    root.emb.time_proj = Timesteps(num_channels=256, flip_sin_to_cos=True, downscale_freq_shift=0)  # the Mod's shift 0
    root.emb.class_embedder.dropout_prob = 0.0
    blocks = []
    for _ in range(LAYERS):
        blk = nn.Module()
        blk.norm1 = AdaLayerNormZero(D, None)
        blk.attn1 = Attention(query_dim=D, heads=HEADS, dim_head=HEAD_DIM, bias=True, out_bias=True)
        blk.norm3 = nn.LayerNorm(D, NORM_EPS, elementwise_affine=False)
        blk.ff = FeedForward(D, activation_fn="gelu-approximate")
        blocks.append(blk)
    root.transformer_blocks = nn.ModuleList(blocks)
    root.norm_out = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
    root.proj_out_1 = nn.Linear(D, 2 * D)
    root.proj_out_2 = nn.Linear(D, P * P * K * (C + 1))
    root.gm_out = nn.Module()
    root.gm_out.logstd_layers = nn.Sequential(nn.SiLU(), nn.Linear(D, LOGSTD_HIDDEN), nn.SiLU(),
                                              nn.Linear(LOGSTD_HIDDEN, 1))
    return root


def test_fixture_layout_and_reference_match_diffusers_modules():
    """The hand-written official state dict has exactly the keys and shapes of the module tree, and the float64
    reference equals the official forward driven through diffusers' PatchEmbed, embeddings, AdaLayerNormZero,
    Attention and FeedForward (as in _GMDiTTransformer2DModel.forward and BasicTransformerBlockMod.forward)."""
    tree = _diffusers_official_tree()
    state = official_transformer_state()
    assert {k: tuple(v.shape) for k, v in tree.state_dict().items()} == {k: tuple(v.shape) for k, v in state.items()}
    tree.load_state_dict(state)
    tree.double().eval()
    x, t, y = _inputs()
    with torch.no_grad():
        hidden = tree.pos_embed(x.double())  # (B, N, D)
        cond = tree.emb(t, y, hidden_dtype=torch.float64)
        for blk in tree.transformer_blocks:
            normed, gate_msa, shift_mlp, scale_mlp, gate_mlp = blk.norm1(hidden, emb=cond)
            hidden = hidden + gate_msa.unsqueeze(1) * blk.attn1(normed)
            normed = blk.norm3(hidden) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
            hidden = hidden + gate_mlp.unsqueeze(1) * blk.ff(normed)
        shift, scale = tree.proj_out_1(F.silu(cond)).chunk(2, dim=1)
        hidden = tree.norm_out(hidden) * (1 + scale[:, None]) + shift[:, None]
        g, h = K * (C + 1), SIZE // P
        out = tree.proj_out_2(hidden).reshape(len(x), h, h, P, P, g).permute(0, 5, 1, 3, 2, 4).reshape(
            len(x), g, SIZE, SIZE)
        logstds = tree.gm_out.logstd_layers(cond)
    ref = reference_forward(state, x, t, y)
    assert _relclose(out[:, : K * C].reshape(ref["means"].shape), ref["means"], 1e-6)
    assert _relclose(out[:, K * C :].reshape(len(x), K, 1, SIZE, SIZE).log_softmax(1), ref["logweights"], 1e-6)
    assert _relclose(logstds.reshape(-1), ref["logstds"].reshape(-1), 1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------------------------


def test_converted_run_has_every_key_and_records_its_source(run, snapshot):
    from safetensors.torch import load_file

    net, spectrum, spec = load_run(run)  # strict load_state_dict: no missing, no unexpected key
    assert set(load_file(str(run / "ema.safetensors"))) == set(net.state_dict())
    assert set(load_file(str(run / "spectrum_ema.safetensors"))) == set(spectrum.state_dict())
    assert all(v.dtype == torch.float32 for v in load_file(str(run / "ema.safetensors")).values())
    assert spec["network"] == "gmdit-xl-2-official" and spec["method"] == "gmflow" and spec["spectral"] is True
    assert (spec["num_components"], spec["sample_shape"], spec["num_classes"]) == (K, [C, SIZE, SIZE], CLASSES)
    assert net.config.mlp_norm_eps == NORM_EPS and net.null_label == CLASSES
    files = spec["imported_from"]["files"]
    assert set(files) == {"transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
                          "spectrum_net/config.json", "spectrum_net/diffusion_pytorch_model.safetensors",
                          "scheduler/scheduler_config.json"}
    assert all(len(h) == 64 for h in files.values())
    assert spec["imported_from"]["snapshot"] == str(snapshot.resolve())


def test_converted_network_equals_the_official_forward(run):
    """Means, logweights and logstds of the converted DiT (float64) equal the reference at t in [0, 1000] and labels
    including the null class."""
    net, _, _ = load_run(run)
    net.double()
    x, t, y = _inputs()
    with torch.no_grad():
        gm = net(x.double(), t, y)
    ref = reference_forward(official_transformer_state(), x, t, y)
    assert _relclose(gm.means, ref["means"])
    assert _relclose(gm.logweights, ref["logweights"])
    assert _relclose(gm.logstds, ref["logstds"])
    assert gm.means.std() > 0.1 and ref["logstds"].std() > 1e-3  # a non-degenerate comparison


def test_default_mlp_norm_eps_differs_from_the_official_forward(run):
    """The one non-layout difference is small but above round-off: with this project's default eps 1e-6 the means are
    about 2e-6 (relative) off the reference, with the official 1e-5 about 1e-8."""
    net, _, _ = load_run(run)
    x, t, y = _inputs()
    ref = reference_forward(official_transformer_state(), x, t, y, norm_eps=1e-6)
    with torch.no_grad():
        gm = net.double()(x.double(), t, y)
    assert not _relclose(gm.means, ref["means"], 2e-7)


def test_converted_spectrum_equals_the_official_forward(run):
    _, spectrum, _ = load_run(run)
    spectrum.double()
    g = torch.Generator().manual_seed(5)
    mean = 0.7 * torch.randn(4, C, SIZE, SIZE, generator=g, dtype=torch.float64)
    for var in (torch.rand(4, 1, SIZE, SIZE, generator=g, dtype=torch.float64),
                torch.rand(4, 1, 1, 1, generator=g, dtype=torch.float64)):
        with torch.no_grad():
            ours = spectrum(IsoGaussian(mean, var))
        assert _relclose(ours, reference_spectrum(official_spectrum_state(), mean, var))


def test_bf16_variant_is_read_and_converted_to_float32(tmp_path):
    from safetensors.torch import load_file

    snap = write_snapshot(tmp_path / "snap", variant_dtype=torch.bfloat16)
    spec = import_official(snap, tmp_path / "run", variant="bf16", dataset=None)
    ours = load_file(str(tmp_path / "run" / "ema.safetensors"))
    official = official_transformer_state()
    assert ours["y_embedder.weight"].dtype == torch.float32
    assert torch.equal(ours["y_embedder.weight"],
                       official["emb.class_embedder.embedding_table.weight"].to(torch.bfloat16).float())
    assert "transformer/diffusion_pytorch_model.bf16.safetensors" in spec["imported_from"]["files"]
    # spectrum_net has no bf16 file here: its full-precision file is read and recorded
    assert "spectrum_net/diffusion_pytorch_model.safetensors" in spec["imported_from"]["files"]
    assert spec["imported_from"]["variant"] == "bf16" and spec["imported_from"]["dtypes"]["transformer"] == [
        "torch.bfloat16"]


def test_sharded_snapshot_converts_like_a_single_file(tmp_path, run):
    from safetensors.torch import load_file

    snap = write_snapshot(tmp_path / "snap")
    folder = snap / "transformer"
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    state = official_transformer_state()
    keys = sorted(state)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[::2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[1::2]}
    for name, ks in shards.items():
        save_file({k: state[k] for k in ks}, str(folder / name))
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}))
    import_official(snap, tmp_path / "run2", dataset=None)
    a, b = load_file(str(run / "ema.safetensors")), load_file(str(tmp_path / "run2" / "ema.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_published_config_maps_to_the_official_variant():
    """Full scale, structure only: the ImageNet config (configs/gmflow_imagenet_k8_8gpus.py overrides K = 8 on the
    class defaults) gives gmdit-xl-2-official, and the official layout has as many parameters as the converted DiT."""
    from gmflow.harness.dit import DIT_VARIANTS, build_dit, count_parameters
    from gmflow.harness.official import dit_config_from_official, official_transformer_shapes

    config, k = dit_config_from_official({"num_gaussians": 8})
    assert (config, k) == (DIT_VARIANTS["gmdit-xl-2-official"], 8)
    with torch.device("meta"):
        net = build_dit("gmdit-xl-2-official", "gm", 8)
    official = sum(math.prod(shape) for shape in official_transformer_shapes(config, k).values())
    assert official == count_parameters(net) == 676_164_001


# ----------------------------------------------------------------------------------------------------------------------
# Corrupted snapshots
# ----------------------------------------------------------------------------------------------------------------------


def _refusal(tmp_path, **snapshot_kw) -> str:
    snap = write_snapshot(tmp_path / "bad", **snapshot_kw)
    with pytest.raises(ValueError) as e:
        import_official(snap, tmp_path / "run", dataset=None)
    assert not (tmp_path / "run" / "run.json").exists()
    return str(e.value)


def test_missing_key_is_refused_by_name(tmp_path):
    state = official_transformer_state()
    del state["transformer_blocks.1.attn1.to_k.bias"]
    msg = _refusal(tmp_path, transformer=state)
    assert "'transformer_blocks.1.attn1.to_k.bias' is missing" in msg and "diffusion_pytorch_model" in msg


def test_unexpected_key_is_refused_by_name(tmp_path):
    state = official_transformer_state()
    state["proj_out_means.weight"] = torch.zeros(3, D)  # the unused V2 head layout
    assert "unexpected key 'proj_out_means.weight'" in _refusal(tmp_path, transformer=state)


def test_wrong_shape_is_refused_by_name(tmp_path):
    state = official_transformer_state()
    state["proj_out_2.weight"] = state["proj_out_2.weight"][:-1]
    msg = _refusal(tmp_path, transformer=state)
    assert "'proj_out_2.weight' has shape [59, 64], expected [60, 64]" in msg


def test_wrong_spectrum_shape_is_refused_by_name(tmp_path):
    spectrum = official_spectrum_state()
    spectrum["mlp.4.bias"] = spectrum["mlp.4.bias"][:10]
    assert "'mlp.4.bias' has shape [10]" in _refusal(tmp_path, spectrum=spectrum)


@pytest.mark.parametrize("field,value", [("norm_type", "ada_norm"), ("activation_fn", "geglu"),
                                         ("constant_logstd", 0.0), ("gm_num_logstd_layers", 3), ("out_channels", 8)])
def test_unsupported_config_is_refused_by_field(tmp_path, field, value):
    msg = _refusal(tmp_path, config=official_transformer_config(**{field: value}))
    assert f"{field} = {value!r}" in msg and "config.json" in msg


def test_truncated_safetensors_is_refused_by_file(snapshot, tmp_path):
    path = snapshot / "transformer" / "diffusion_pytorch_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model\.safetensors is not a readable safetensors file"):
        import_official(snapshot, tmp_path / "run", dataset=None)


def test_pickle_checkpoint_is_refused(snapshot, tmp_path):
    folder = snapshot / "transformer"
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(official_transformer_state(), folder / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match=r"holds only pickle checkpoint\(s\) \['diffusion_pytorch_model.bin'\]"):
        import_official(snapshot, tmp_path / "run", dataset=None)


def test_pickle_under_a_safetensors_name_is_refused(snapshot, tmp_path):
    path = snapshot / "spectrum_net" / "diffusion_pytorch_model.safetensors"
    torch.save(official_spectrum_state(), path)
    with pytest.raises(ValueError, match="spectrum_net/diffusion_pytorch_model.safetensors is not a readable"):
        import_official(snapshot, tmp_path / "run", dataset=None)


def test_missing_component_and_existing_run_are_refused(snapshot, run, tmp_path):
    with pytest.raises(ValueError, match="already holds a run"):
        import_official(snapshot, run, dataset=None)
    (snapshot / "spectrum_net" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="spectrum_net has no diffusion_pytorch_model.safetensors"):
        import_official(snapshot, tmp_path / "other", dataset=None)


# ----------------------------------------------------------------------------------------------------------------------
# Sampling and the CLI
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver,spectral", [("gm-ode-2", False), ("gm-sde-2", True)])
def test_converted_run_samples_with_probabilistic_guidance(run, solver, spectral):
    net, spectrum, spec = load_run(run)
    labels = torch.tensor([0, 3, 4])
    x, rec = generate(net, spec["method"], solver, 2, 3, tuple(spec["sample_shape"]), seed=0, guidance="probabilistic",
                      scale=0.3, labels=labels, null_label=net.null_label, progress=False,
                      spectrum_net=spectrum if spectral else None)
    assert x.shape == (3, C, SIZE, SIZE) and bool(torch.isfinite(torch.from_numpy(x)).all())
    assert rec["nfe"] == 2 and rec["spectral"] == int(spectral)


def test_cli_imports_and_refuses_in_one_line(snapshot, tmp_path, capsys):
    # the CLI binds the run to imagenet256: the tiny snapshot's 4x8x8 latents are refused with exit code 2
    assert main(["import-official", "--snapshot", str(snapshot), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "[4, 8, 8] latents with 5 classes" in err and "imagenet256" in err
    assert main(["import-official", "--snapshot", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["import-official", "--help"]) == 0
    assert "huggingface-cli download Lakonik/gmflow_imagenet_k8_ema" in capsys.readouterr().out


def test_official_config_validates_and_refuses_a_wrong_model():
    """config/imagenet256-official.yaml samples an imported run, which must be GMFlow K = 8 on imagenet256."""
    import yaml
    from project import SCHEMA

    from gmflow.experiments.config import validate_config
    from gmflow.harness.schema import ConfigError

    config = yaml.safe_load(open(Path(__file__).resolve().parents[1] / "config/imagenet256-official.yaml"))
    config["images"].update(image_root="/data/train", vae="/models/vae")
    checked = validate_config(json.loads(json.dumps(config)), SCHEMA)
    assert checked["images"]["runs"]["official"]["official"] and checked["precision"] == "bf16"
    config["images"]["runs"]["official"]["K"] = 4
    with pytest.raises(ConfigError, match="GMFlow K = 8 model of imagenet256"):
        validate_config(config, SCHEMA)
