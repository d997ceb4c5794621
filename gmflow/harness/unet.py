"""U-Net backbone (Ho et al. 2020, the DDPM CIFAR-10 network) with a GM head or a velocity head.

GMFlow on CIFAR-10 (Table 5 of Chen et al. 2025) puts the GM head on the DDPM U-Net. The trunk is diffusers'
``UNet2DModel``; only its output width changes between the heads, so GMFlow and flow matching differ in the output
projection alone, as with the DiT (:mod:`gmflow.harness.dit`):

- ``head="gm"``: the U-Net's last conv gives ``K (C + 1)`` channels per pixel: the first ``K C`` are the means
  ``(B, K, C, H, W)``, the last ``K`` the logits, log-softmaxed over K into the logweights ``(B, K, 1, H, W)``. One
  log-std per sample ``(B, 1, 1, 1, 1)`` comes from a small MLP (SiLU, Linear, SiLU, Linear) on the U-Net's own
  timestep embedding (plus the class embedding of a conditional net), detached: it depends on ``t`` (and the class)
  only, not on ``x_t`` (docs/method.md, Sec. 2.2). Its last layer is zero, so ``s = 1`` at init. The output is a
  velocity-space :class:`GaussianMixture`.
- ``head="velocity"``: ``C`` output channels, the velocity ``(B, C, H, W)``.

The input time is ``t = 1000 sigma`` (continuous; ``sigma = 1`` is noise), fed to the U-Net's sinusoidal embedding as
it is. The calling convention is that of the DiT: ``forward(x_t, t, y=None)``. ``num_classes = 0`` (CIFAR-10 here)
is unconditional: ``y`` must be None and there is no null label (``null_label`` is None), so no guidance.

The trunk keeps diffusers' initialisation (PyTorch defaults); the GM head's log-std MLP ends in zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor, nn

from gmflow.gm import GaussianMixture

HEADS = ("gm", "velocity")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a U-Net variant (head and K are chosen separately, see :func:`build_unet`).

    Attributes:
        input_size: H = W.
        in_channels: C.
        num_classes: class count; a conditional net has a label table of ``num_classes + 1`` rows (the last one the
            null class). 0 = unconditional.
        block_out_channels: channels per resolution level (DDPM CIFAR-10: ch 128 x mult (1, 2, 2, 2)).
        attention_levels: indices of the levels with self-attention (DDPM CIFAR-10: the 16x16 level, index 1).
        layers_per_block: residual blocks per level on the way down (one more on the way up, as in DDPM).
        dropout: dropout in every residual block (DDPM CIFAR-10: 0.1).
        norm_num_groups: GroupNorm groups (32 in DDPM; must divide every level's channels).
        flip_sin_to_cos, freq_shift: the timestep sinusoid (DDPM: sin first, ``log(10000) / (half - 1)``).
        logstd_hidden: hidden size of the GM head's log-std MLP; 0 = the timestep embedding's size.
    """

    input_size: int
    in_channels: int
    num_classes: int = 0
    block_out_channels: tuple[int, ...] = (128, 256, 256, 256)
    attention_levels: tuple[int, ...] = (1,)
    layers_per_block: int = 2
    dropout: float = 0.1
    norm_num_groups: int = 32
    flip_sin_to_cos: bool = False
    freq_shift: int = 1
    logstd_hidden: int = 0


class UNet(nn.Module):
    """A diffusers ``UNet2DModel`` with a GM head (GMFlow) or a velocity head (flow matching); see the module docstring.

    Args:
        config: the architecture.
        head: ``"gm"`` or ``"velocity"``.
        num_components: K of the GM head (ignored by the velocity head).
    """

    def __init__(self, config: UNetConfig, head: str = "gm", num_components: int = 2):
        super().__init__()
        from diffusers import UNet2DModel

        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if head == "gm" and num_components < 1:
            raise ValueError(f"num_components (K) must be >= 1 for the GM head, got {num_components}")
        if config.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = unconditional), got {config.num_classes}")
        levels = len(config.block_out_channels)
        if any(not 0 <= i < levels for i in config.attention_levels):
            raise ValueError(f"attention_levels {config.attention_levels} must index the {levels} levels")
        if config.input_size % 2 ** (levels - 1):
            raise ValueError(f"input size {config.input_size} is not divisible by 2^{levels - 1} ({levels} levels)")
        bad = [ch for ch in config.block_out_channels if ch % config.norm_num_groups]
        if bad:
            raise ValueError(f"norm_num_groups {config.norm_num_groups} does not divide the channels {bad}")
        self.config, self.head = config, head
        self.K = num_components if head == "gm" else 1
        self.input_hw = (config.input_size, config.input_size)
        c = config.in_channels
        self.out_channels = self.K * (c + 1) if head == "gm" else c
        attn = set(config.attention_levels)
        down = tuple("AttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(levels))
        up = tuple("AttnUpBlock2D" if levels - 1 - i in attn else "UpBlock2D" for i in range(levels))
        self.unet = UNet2DModel(
            sample_size=config.input_size, in_channels=c, out_channels=self.out_channels,
            down_block_types=down, up_block_types=up, block_out_channels=tuple(config.block_out_channels),
            layers_per_block=config.layers_per_block, dropout=config.dropout, attention_head_dim=None,
            norm_num_groups=config.norm_num_groups, norm_eps=1e-6, downsample_padding=0,
            flip_sin_to_cos=config.flip_sin_to_cos, freq_shift=config.freq_shift,
            num_class_embeds=config.num_classes + 1 if config.num_classes else None,
        )  # fmt: skip
        if head == "gm":
            temb = self.unet.time_embedding.linear_2.out_features
            hidden = config.logstd_hidden or temb
            self.logstd_mlp = nn.Sequential(nn.SiLU(), nn.Linear(temb, hidden), nn.SiLU(), nn.Linear(hidden, 1))
            nn.init.zeros_(self.logstd_mlp[-1].weight)
            nn.init.zeros_(self.logstd_mlp[-1].bias)

    @property
    def null_label(self) -> int | None:
        """Index of the null class of a conditional net (the last label row); None when unconditional."""
        return self.config.num_classes if self.config.num_classes else None

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters that depend on the head: the last conv and, for the GM head, the log-std MLP."""
        params = list(self.unet.conv_out.parameters())
        if self.head == "gm":
            params += list(self.logstd_mlp.parameters())
        return params

    def _labels(self, y: Tensor | None, b: int, device) -> Tensor | None:
        if self.config.num_classes == 0:
            if y is not None:
                raise ValueError("this U-Net is unconditional (num_classes 0): call it with y=None")
            return None
        if y is None:
            return torch.full((b,), self.null_label, dtype=torch.long, device=device)
        if y.shape != (b,):
            raise ValueError(f"y must be (B,) = ({b},) class indices, got shape {tuple(y.shape)}")
        return y

    def embed_condition(self, t: Tensor, y: Tensor | None) -> Tensor:
        """The U-Net's conditioning vector ``(B, 4 ch)``: timestep embedding plus the class embedding if any."""
        emb = self.unet.time_embedding(self.unet.time_proj(t).to(self.unet.dtype))  # (B, 4 ch)
        if y is not None:
            emb = emb + self.unet.class_embedding(y).to(emb.dtype)  # (B, 4 ch)
        return emb

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> GaussianMixture | Tensor:
        """Predict the velocity distribution (GM head) or the velocity (velocity head).

        Args:
            x_t: noisy images ``(B, C, H, W)``.
            t: timesteps ``(B,)`` in [0, 1000] (``t = 1000 sigma``, continuous).
            y: class indices ``(B,)`` of a conditional net (None = the null class); must be None when unconditional.

        Returns:
            head ``"gm"``: a velocity-space :class:`GaussianMixture` with means ``(B, K, C, H, W)``, logweights
            ``(B, K, 1, H, W)`` and logstds ``(B, 1, 1, 1, 1)``; head ``"velocity"``: ``(B, C, H, W)``.
        """
        b, c, h, w = x_t.shape  # (B, C, H, W)
        if (c, h, w) != (self.config.in_channels, *self.input_hw):
            raise ValueError(f"x_t must be (B, {self.config.in_channels}, {h}, {w}) = the U-Net's input "
                             f"(B, {self.config.in_channels}, {self.input_hw[0]}, {self.input_hw[1]}), "
                             f"got {tuple(x_t.shape)}")
        if t.shape != (b,):
            raise ValueError(f"t must be (B,) = ({b},) timesteps, got shape {tuple(t.shape)}")
        y = self._labels(y, b, x_t.device)
        out = self.unet(x_t, t, class_labels=y).sample  # (B, out_channels, H, W)
        if self.head == "velocity":
            return out  # (B, C, H, W)
        k = self.K
        means, logits = out.split([k * c, k], dim=1)  # (B, K C, H, W), (B, K, H, W)
        means = means.reshape(b, k, c, h, w)  # (B, K, C, H, W)
        logweights = torch.log_softmax(logits, dim=1).unsqueeze(2)  # (B, K, 1, H, W)
        c_emb = self.embed_condition(t, y).detach()  # (B, 4 ch), stop-grad into the trunk
        logstds = self.logstd_mlp(c_emb).reshape(b, 1, 1, 1, 1)  # (B, 1, 1, 1, 1)
        return GaussianMixture(means, logweights, logstds)


# ----------------------------------------------------------------------------------------------------------------------
# Named variants
# ----------------------------------------------------------------------------------------------------------------------

UNET_VARIANTS: dict[str, UNetConfig] = {
    # Ho et al. 2020, the CIFAR-10 network: ch 128, mult (1, 2, 2, 2), 2 res blocks, attention at 16x16, dropout 0.1.
    # 35.7M parameters with the velocity head (tests/test_cifar10.py).
    "unet-cifar10": UNetConfig(input_size=32, in_channels=3),
    # Tests and CI: two levels of 16 and 32 channels on 32x32x3, attention at 16x16.
    "unet-tiny": UNetConfig(input_size=32, in_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                            dropout=0.0, norm_num_groups=8, logstd_hidden=32),
}


def build_unet(name: str, head: str = "gm", num_components: int = 2, **overrides) -> UNet:
    """Build a named U-Net variant, optionally overriding fields of its :class:`UNetConfig`.

    Example: ``build_unet("unet-cifar10", "gm", 2)`` is the GMFlow network of the paper's Table 5.
    """
    if name not in UNET_VARIANTS:
        raise ValueError(f"unknown U-Net variant {name!r}; choose one of {sorted(UNET_VARIANTS)}")
    names = {f.name for f in fields(UNetConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown U-Net config field(s) {sorted(unknown)}; valid fields: {sorted(names)}")
    return UNet(replace(UNET_VARIANTS[name], **overrides), head, num_components)
