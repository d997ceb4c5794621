"""DiT backbone (Peebles & Xie 2023) with a GM head or a velocity head: the image network of docs/method.md, Sec. 2.1.

A class-conditional transformer over patches of ``x_t (B, C, H, W)``:

- patch embedding = a Linear over flattened ``p x p x C`` patches (the same map as DiT's strided conv, and initialised
  like a Linear), plus a fixed 2D sin-cos position embedding (a non-trainable buffer, not a parameter);
- conditioning ``c_emb = t_emb + y_emb``: ``t_emb`` = MLP of the 256-d sinusoid of ``t = 1000 sigma`` (flip_sin_to_cos,
  frequency shift 0, as in DiT); ``y_emb`` = a table of ``num_classes + 1`` rows, the last row the null class;
- ``depth`` blocks with adaLN-Zero (shift, scale, gate for attention and for the GELU-tanh MLP);
- final layer: LayerNorm without affine, modulation (shift, scale) from ``c_emb``, Linear, unpatchify.

The two heads share this trunk, so GMFlow and flow matching differ only in the output projection:

- ``head="gm"``: the final Linear gives ``p * p * K (C + 1)`` values per token; after unpatchify the first ``K C``
  channels are the means ``(B, K, C, H, W)`` and the last ``K`` the logits, log-softmaxed over K into the logweights
  ``(B, K, 1, H, W)``. One log-std per sample ``(B, 1, 1, 1, 1)`` comes from a small MLP on ``c_emb.detach()``
  (SiLU, Linear, SiLU, Linear), whose last layer is zero so that ``s = 1`` at init (docs/method.md, Sec. 2.2). The
  output is a velocity-space :class:`GaussianMixture`.
- ``head="velocity"``: the final Linear gives ``p * p * C`` values per token: the velocity ``(B, C, H, W)``.

Init (docs/method.md, Sec. 2.1): xavier-uniform on every Linear (patch embedding and timestep MLP included), zero
biases, N(0, 0.02) label table, adaLN modulation Linears of every block and of the final layer zeroed, the output
projection NOT zeroed. So every block is the identity at init and the output does not depend on ``t`` or ``y`` until
training moves the modulation weights. (The original DiT draws its timestep MLP from N(0, 0.02) and zeroes the output
projection; GMFlow's GM-DiT uses xavier on all Linears and keeps the output projection random, which is what is done
here.)

The calling convention is that of :class:`gmflow.harness.mlp2d.MLP2D`: ``forward(x_t, t, y=None)`` with
``t = 1000 sigma`` continuous, so :class:`gmflow.harness.sampling.CountingModel` drives it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gmflow.gm import GaussianMixture
from gmflow.harness.mlp2d import timestep_embedding

HEADS = ("gm", "velocity")


# ----------------------------------------------------------------------------------------------------------------------
# Patches and position embedding
# ----------------------------------------------------------------------------------------------------------------------


def patchify(x: Tensor, patch_size: int) -> Tensor:
    """Split images into non-overlapping patches, row-major over the patch grid.

    Args:
        x: ``(B, C, H, W)`` with H and W divisible by ``patch_size`` = p.

    Returns:
        ``(B, (H/p)(W/p), C p p)``; within a token the order is (channel, row in patch, column in patch), the
        layout of a strided conv's weight ``(D, C, p, p)``. (DiT orders its output tokens (row, column, channel);
        the order of a Linear's rows is arbitrary, and this one makes :func:`unpatchify` copy runs of p contiguous
        values instead of gathering with stride C, which matters for the ``K (C + 1)``-channel GM output.)
    """
    b, c, h, w = x.shape
    p = patch_size
    x = x.reshape(b, c, h // p, p, w // p, p)  # (B, C, h, p, w, p)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, p, p)
    return x.reshape(b, (h // p) * (w // p), c * p * p)  # (B, N, C p p)


def unpatchify(tokens: Tensor, patch_size: int, grid_size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`patchify`: ``(B, N, C p p)`` -> ``(B, C, h p, w p)`` for ``grid_size = (h, w)``."""
    b, n, d = tokens.shape
    p, (gh, gw) = patch_size, grid_size
    c = d // (p * p)
    x = tokens.reshape(b, gh, gw, c, p, p)  # (B, h, w, C, p, p)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (B, C, h, p, w, p)
    return x.reshape(b, c, gh * p, gw * p)  # (B, C, H, W)


def sincos_1d(pos: Tensor, dim: int) -> Tensor:
    """1D sin-cos embedding: ``[sin(pos omega_i), cos(pos omega_i)]``, ``omega_i = 10000^(-i / (dim/2))``.

    Args:
        pos: ``(N,)`` positions.

    Returns:
        ``(N, dim)``.
    """
    if dim % 2:
        raise ValueError(f"the 1D sin-cos embedding needs an even dimension, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2))
    args = pos.double()[:, None] * omega[None]  # (N, dim/2)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1).float()


def sincos_2d(grid_size: tuple[int, int], dim: int) -> Tensor:
    """Fixed 2D sin-cos position embedding of a row-major ``(h, w)`` token grid (the MAE / DiT layout).

    The first ``dim/2`` features embed the column index, the last ``dim/2`` the row index.

    Returns:
        ``(h w, dim)``.
    """
    if dim % 4:
        raise ValueError(f"the 2D sin-cos embedding needs a width divisible by 4, got {dim}")
    gh, gw = grid_size
    rows = torch.arange(gh).repeat_interleave(gw)  # (N,): row of token n = n // w
    cols = torch.arange(gw).repeat(gh)  # (N,): column of token n = n % w
    return torch.cat([sincos_1d(cols, dim // 2), sincos_1d(rows, dim // 2)], dim=1)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation ``x (1 + scale) + shift`` of tokens ``(B, N, D)`` by per-sample ``(B, D)``."""
    return x * (1 + scale[:, None]) + shift[:, None]


# ----------------------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv Linear and an output projection."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape  # (B, N, D)
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)  # (B, N, 3, heads, D/heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, heads, N, D/heads)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, D/heads)
        out = out.transpose(1, 2).reshape(b, n, d)  # (B, N, D)
        return self.proj(out)  # (B, N, D)


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero: ``x + gate * f(modulate(LN(x), shift, scale))`` for attention and MLP."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0, mlp_norm_eps: float = 1e-6):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, num_heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=mlp_norm_eps)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.adaLN_modulation = nn.Linear(width, 6 * width)  # input: SiLU(c_emb), shared by all blocks

    def forward(self, x: Tensor, c_act: Tensor) -> Tensor:
        mods = self.adaLN_modulation(c_act)  # (B, 6 D)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mods.chunk(6, dim=1)  # 6 x (B, D)
        x = x + gate_a[:, None] * self.attn(modulate(self.norm1(x), shift_a, scale_a))  # (B, N, D)
        x = x + gate_m[:, None] * self.mlp(modulate(self.norm2(x), shift_m, scale_m))  # (B, N, D)
        return x


class FinalLayer(nn.Module):
    """LayerNorm (no affine), modulation (shift, scale) from ``c_emb``, and the output projection."""

    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Linear(width, 2 * width)  # proj_out_1 of the reference: zeroed at init
        self.linear = nn.Linear(width, out_dim)  # proj_out_2: xavier, NOT zeroed

    def forward(self, x: Tensor, c_act: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c_act).chunk(2, dim=1)  # 2 x (B, D)
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, N, out_dim)


# ----------------------------------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiTConfig:
    """Architecture of a DiT variant (the head and K are chosen separately, see :func:`build_dit`).

    Attributes:
        input_size: H = W, or ``(H, W)``; divisible by ``patch_size``.
        in_channels: C.
        patch_size: p.
        depth: number of blocks.
        width: hidden size D (divisible by ``num_heads`` and by 4).
        num_heads: attention heads.
        num_classes: class count; the label table has one more row, the null class. 0 = unconditional.
        mlp_ratio: MLP hidden size / D.
        logstd_hidden: hidden size of the GM head's log-std MLP (1024 for ImageNet).
        frequency_dim: size of the timestep sinusoid (256 in DiT).
        mlp_norm_eps: eps of the LayerNorm in front of each block's MLP. DiT uses 1e-6 (as for every other
            LayerNorm here); the published GM-DiT checkpoint was trained with 1e-5 there, the diffusers default of its
            transformer config (docs/official_checkpoint.md). It has no weights, so it does not change the state dict.
    """

    input_size: int | tuple[int, int]
    in_channels: int
    patch_size: int
    depth: int
    width: int
    num_heads: int
    num_classes: int
    mlp_ratio: float = 4.0
    logstd_hidden: int = 1024
    frequency_dim: int = 256
    mlp_norm_eps: float = 1e-6


class DiT(nn.Module):
    """Class-conditional DiT with a GM head (GMFlow) or a velocity head (flow matching). See the module docstring.

    Args:
        config: the architecture.
        head: ``"gm"`` or ``"velocity"``.
        num_components: K of the GM head (ignored by the velocity head).
        grad_checkpointing: recompute each block in the backward pass (saves activation memory at GPU scale).
    """

    def __init__(self, config: DiTConfig, head: str = "gm", num_components: int = 8, grad_checkpointing: bool = False):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if head == "gm" and num_components < 1:
            raise ValueError(f"num_components (K) must be >= 1 for the GM head, got {num_components}")
        size = config.input_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        p = config.patch_size
        if h % p or w % p:
            raise ValueError(f"input size {(h, w)} is not divisible by patch size {p}; pick a patch size dividing both")
        if config.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = unconditional), got {config.num_classes}")
        self.config, self.head, self.grad_checkpointing = config, head, grad_checkpointing
        self.K = num_components if head == "gm" else 1
        self.input_hw = (h, w)
        self.grid_size = (h // p, w // p)
        c, d = config.in_channels, config.width
        self.out_channels = self.K * (c + 1) if head == "gm" else c

        self.x_embedder = nn.Linear(p * p * c, d)
        self.register_buffer("pos_embed", sincos_2d(self.grid_size, d)[None], persistent=False)  # (1, N, D)
        self.t_embedder = nn.Sequential(nn.Linear(config.frequency_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.y_embedder = nn.Embedding(config.num_classes + 1, d)
        self.blocks = nn.ModuleList(
            DiTBlock(d, config.num_heads, config.mlp_ratio, config.mlp_norm_eps) for _ in range(config.depth)
        )
        self.final_layer = FinalLayer(d, p * p * self.out_channels)
        if head == "gm":
            self.logstd_mlp = nn.Sequential(
                nn.SiLU(), nn.Linear(d, config.logstd_hidden), nn.SiLU(), nn.Linear(config.logstd_hidden, 1)
            )
        self.reset_parameters()

    @property
    def null_label(self) -> int:
        """Index of the null (unconditional) class: the last row of the label table."""
        return self.config.num_classes

    def reset_parameters(self) -> None:
        """Init of docs/method.md, Sec. 2.1: xavier Linears with zero biases, N(0, 0.02) labels, adaLN-Zero, s = 1."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.y_embedder.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation.weight)
            nn.init.zeros_(block.adaLN_modulation.bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation.weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation.bias)
        if self.head == "gm":
            nn.init.zeros_(self.logstd_mlp[-1].weight)
            nn.init.zeros_(self.logstd_mlp[-1].bias)

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters that depend on the head: the output projection and, for the GM head, the log-std MLP."""
        params = list(self.final_layer.linear.parameters())
        if self.head == "gm":
            params += list(self.logstd_mlp.parameters())
        return params

    def embed_condition(self, t: Tensor, y: Tensor | None) -> Tensor:
        """``c_emb = t_emb + y_emb`` ``(B, D)``; ``y = None`` selects the null class for the whole batch."""
        b = t.shape[0]
        if y is None:
            y = torch.full((b,), self.null_label, dtype=torch.long, device=t.device)
        if y.shape != (b,):
            raise ValueError(f"y must be (B,) = ({b},) class indices, got shape {tuple(y.shape)}")
        t_freq = timestep_embedding(t, self.config.frequency_dim, flip_sin_to_cos=True, shift=0.0)  # (B, 256)
        t_emb = self.t_embedder(t_freq.to(self.y_embedder.weight.dtype))  # (B, D)
        return t_emb + self.y_embedder(y)  # (B, D)

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> GaussianMixture | Tensor:
        """Predict the velocity distribution (GM head) or the velocity (velocity head).

        Args:
            x_t: noisy images ``(B, C, H, W)``.
            t: timesteps ``(B,)`` in [0, 1000] (``t = 1000 sigma``, continuous).
            y: class indices ``(B,)`` in ``[0, num_classes]`` (``num_classes`` = null), or None for the null class.

        Returns:
            head ``"gm"``: a velocity-space :class:`GaussianMixture` with means ``(B, K, C, H, W)``, logweights
            ``(B, K, 1, H, W)`` and logstds ``(B, 1, 1, 1, 1)``; head ``"velocity"``: ``(B, C, H, W)``.
        """
        b, c, h, w = x_t.shape  # (B, C, H, W)
        if (c, h, w) != (self.config.in_channels, *self.input_hw):
            raise ValueError(
                f"x_t must be (B, {self.config.in_channels}, {self.input_hw[0]}, {self.input_hw[1]}) for this DiT, "
                f"got {tuple(x_t.shape)}"
            )
        p = self.config.patch_size
        x = self.x_embedder(patchify(x_t, p)) + self.pos_embed  # (B, N, D), N = (H/p)(W/p)
        c_emb = self.embed_condition(t, y)  # (B, D)
        c_act = F.silu(c_emb)  # (B, D): the input of every adaLN modulation Linear
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, c_act, use_reentrant=False)  # (B, N, D)
            else:
                x = block(x, c_act)  # (B, N, D)
        x = self.final_layer(x, c_act)  # (B, N, p p out_channels)
        out = unpatchify(x, p, self.grid_size)  # (B, out_channels, H, W)
        if self.head == "velocity":
            return out  # (B, C, H, W)
        k = self.K
        means, logits = out.split([k * c, k], dim=1)  # (B, K C, H, W), (B, K, H, W); split: one cat in backward
        means = means.reshape(b, k, c, h, w)  # (B, K, C, H, W)
        logweights = torch.log_softmax(logits, dim=1).unsqueeze(2)  # (B, K, 1, H, W)
        logstds = self.logstd_mlp(c_emb.detach()).reshape(b, 1, 1, 1, 1)  # (B, 1, 1, 1, 1), stop-grad into trunk
        return GaussianMixture(means, logweights, logstds)


# ----------------------------------------------------------------------------------------------------------------------
# Named variants
# ----------------------------------------------------------------------------------------------------------------------

_IMAGENET = dict(input_size=32, in_channels=4, num_classes=1000)  # SD-VAE latents of 256x256 ImageNet
_FMNIST = dict(input_size=28, in_channels=1, num_classes=10)

DIT_VARIANTS: dict[str, DiTConfig] = {
    # Peebles & Xie 2023, Table 1 (ImageNet 256 latents); GM-DiT of GMFlow is dit-xl-2.
    "dit-xl-2": DiTConfig(**_IMAGENET, patch_size=2, depth=28, width=1152, num_heads=16),
    # The same network with the published GM-DiT's MLP LayerNorm eps (1e-5): the architecture of the authors'
    # checkpoint, imported by gmflow/harness/official.py (docs/official_checkpoint.md). Same state-dict keys.
    "gmdit-xl-2-official": DiTConfig(
        **_IMAGENET, patch_size=2, depth=28, width=1152, num_heads=16, mlp_norm_eps=1e-5
    ),
    "dit-l-2": DiTConfig(**_IMAGENET, patch_size=2, depth=24, width=1024, num_heads=16),
    "dit-b-2": DiTConfig(**_IMAGENET, patch_size=2, depth=12, width=768, num_heads=12),
    "dit-s-2": DiTConfig(**_IMAGENET, patch_size=2, depth=12, width=384, num_heads=6, logstd_hidden=384),
    # CPU scale, Fashion-MNIST 28x28x1 (measured on 2 CPU cores: ~0.2 s/step at patch 4, ~3.5 s/step for the small one).
    "dit-fmnist-tiny": DiTConfig(**_FMNIST, patch_size=4, depth=4, width=128, num_heads=4, logstd_hidden=128),
    "dit-fmnist-small": DiTConfig(**_FMNIST, patch_size=2, depth=6, width=192, num_heads=4, logstd_hidden=192),
    # Tests and CI: scikit-learn digits 8x8x1.
    "dit-digits-tiny": DiTConfig(
        input_size=8, in_channels=1, num_classes=10, patch_size=2, depth=2, width=32, num_heads=2, logstd_hidden=32
    ),
    # Tests and the ImageNet smoke configuration: 4x4x4 latents of a tiny VAE (class count taken from the cache).
    "dit-latent-tiny": DiTConfig(
        input_size=4, in_channels=4, num_classes=1000, patch_size=1, depth=2, width=32, num_heads=2, logstd_hidden=32
    ),
}


def build_dit(
    name: str, head: str = "gm", num_components: int = 8, grad_checkpointing: bool = False, **overrides
) -> DiT:
    """Build a named DiT variant, optionally overriding fields of its :class:`DiTConfig`.

    Example: ``build_dit("dit-fmnist-tiny", "gm", 8, num_classes=0)`` for an unconditional Fashion-MNIST model.
    """
    if name not in DIT_VARIANTS:
        raise ValueError(f"unknown DiT variant {name!r}; choose one of {sorted(DIT_VARIANTS)}")
    fields = set(DiTConfig.__dataclass_fields__)
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown DiT config field(s) {sorted(unknown)}; valid fields: {sorted(fields)}")
    return DiT(replace(DIT_VARIANTS[name], **overrides), head, num_components, grad_checkpointing)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (buffers such as the fixed position embedding are not counted)."""
    return sum(p.numel() for p in module.parameters())


def num_tokens(config: DiTConfig) -> int:
    """Token count ``(H/p)(W/p)`` of a variant."""
    size = config.input_size
    h, w = (size, size) if isinstance(size, int) else size
    return (h // config.patch_size) * (w // config.patch_size)
