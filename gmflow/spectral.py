"""Spectral sampling and Knothe-Rosenblatt (KR) transport (docs/method.md, Sec. 2.3, 3.5 and 5; Appendix A.3 and Fig. 9
of Chen et al. 2025).

Pixel-wise GM sampling draws ``x0^`` independently at every pixel. Spectral sampling restores spatial correlation:
a standard-normal field ``zeta`` with a learned power spectrum is pushed through the KR transport of the x0-space GM,
so each pixel still follows its GM exactly while neighbouring pixels are correlated.

Pieces, in the order the paper uses them:

- :func:`dht2`: the 2D discrete Hartley transform (real, orthogonal, self-inverse).
- :class:`SpectrumMLP`: maps two statistics of the Gaussian surrogate to a log power spectrum ``P`` ``(B, C, H, W)``
  whose power ``e^P`` has mean 1 per channel.
- :func:`sample_spectral_noise`: ``zeta = DHT(eps * e^{P/2})``.
- :mod:`gmflow.kr`: the "axis_aligned" KR transport between ``N(0, I)`` and the x0-space GM (docs/method.md Sec. 5).
- :func:`spectral_loss` and :func:`spectral_training_loss`: the spectral NLL of Eq. 20 (trains only ``SpectrumMLP``).
- :func:`spectral_x0_sampler`: the ``X0Sampler`` that plugs spectral sampling into GM-SDE.

Everything is a pure tensor function; randomness comes only from an explicit ``torch.Generator``. The KR transport works
for any number of channels ``C`` and any spatial shape ``*S`` (pixels are flattened internally); the spectral parts
need images ``(B, C, H, W)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmflow.gm import EPS, GaussianMixture, IsoGaussian, bcast, draw
from gmflow.kr import gaussian_to_gm, gm_to_gaussian
from gmflow.solvers import X0Sampler

SQRT2 = math.sqrt(2.0)

# ------------------------------------------------------------------------------------------------------------------
# Discrete Hartley transform
# ------------------------------------------------------------------------------------------------------------------


def dht2(x: Tensor) -> Tensor:
    """2D discrete Hartley transform over the last two dimensions (docs/method.md, Sec. 5.1).

    ``DHT(x) = Re(FFT2_ortho(x)) + Im(FFT2_ortho(x))``, i.e. ``DHT(x)[k] = sum_n x[n] cas(-2 pi <k, n / N>) / sqrt(HW)``
    with ``cas = cos + sin``. The transform is real, symmetric, orthogonal and its own inverse, so
    ``dht2(dht2(x)) = x`` and a white Gaussian field stays white.

    Args:
        x: real tensor ``(..., H, W)``.

    Returns:
        real tensor ``(..., H, W)`` of the same dtype.
    """
    f = torch.fft.fft2(x, norm="ortho")  # (..., H, W) complex
    return f.real + f.imag


def sample_spectral_noise(log_power: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Draw a spatially correlated standard-normal field ``zeta`` with log power spectrum ``P``
    (docs/method.md, Sec. 5.2).

    ``S = eps * exp(P / 2)`` with ``eps ~ N(0, I)`` in the frequency domain, then ``zeta = DHT(S)``. Because the DHT is
    self-inverse, ``E[DHT(zeta)^2] = exp(P)``; with ``mean(exp(P)) = 1`` per channel every pixel of ``zeta`` has unit
    variance on average over the image. ``P = 0`` gives i.i.d. ``N(0, 1)`` pixels.

    Args:
        log_power: ``P`` ``(B, C, H, W)`` in the FFT frequency layout (low frequencies at the corners).
        generator: source of ``eps``.

    Returns:
        ``zeta`` ``(B, C, H, W)`` in at least float32.
    """
    dtype = torch.promote_types(log_power.dtype, torch.float32)
    p = log_power.to(dtype)
    eps = draw("randn", p, generator)  # (B, C, H, W), drawn on the generator's device
    return dht2(eps * torch.exp(0.5 * p))


# ------------------------------------------------------------------------------------------------------------------
# SpectrumMLP
# ------------------------------------------------------------------------------------------------------------------


def surrogate_stats(gaussian: IsoGaussian) -> Tensor:
    """The two inputs of :class:`SpectrumMLP` (docs/method.md, Sec. 2.3).

    (i) the mean of the surrogate variance ``v`` over all its entries; (ii) the spatial variance of the surrogate mean
    ``m`` over ``(H, W)`` with the UNBIASED estimator (``torch.var``), averaged over channels.

    Args:
        gaussian: x0-space isotropic surrogate, mean ``(B, C, H, W)``, var ``(B, 1, H, W)`` or ``(B, 1, 1, 1)``.

    Returns:
        ``(B, 2)``.
    """
    mean, var = gaussian.mean, torch.as_tensor(gaussian.var)
    b = mean.shape[0]
    var_stat = var.expand(b, *var.shape[1:]).reshape(b, -1).mean(1)  # (B,)
    mean_stat = mean.var(dim=(-2, -1)).mean(1)  # (B,)
    return torch.stack([var_stat, mean_stat], dim=-1)


def crop_spectrum(spectrum: Tensor, height: int, width: int) -> Tensor:
    """Map a ``base x base`` log spectrum to the frequencies of a smaller ``height x width`` FFT grid
    (docs/method.md, Sec. 2.3).

    In the FFT layout of size ``n``, index ``i < ceil(n/2)`` holds frequency ``i`` and index ``i >= ceil(n/2)`` holds
    ``i - n`` (``torch.fft.fftfreq(n) * n``): the low frequencies sit in the four corners, and frequencies are counted
    in cycles per image. Along each axis this keeps the ``ceil(n/2)`` leading entries (frequencies
    ``0 .. ceil(n/2) - 1``) and the ``floor(n/2)`` trailing entries (frequencies ``-floor(n/2) .. -1``), i.e. the
    reference code's corner blocks.

    One choice differs from a plain crop (a choice made here): for EVEN ``n < base`` the Nyquist entry ``-n/2`` of
    the small grid is the same frequency as ``+n/2``, which the base grid stores separately. A plain crop keeps only
    ``-n/2``; then in 2D the Nyquist row pairs ``(-n/2, k)`` with base entry ``(-n/2, -k)`` instead of its mirror
    ``(+n/2, -k)``, and a symmetric base spectrum (``P[k] = P[-k]``, what a stationary real field has) becomes
    asymmetric. Here the Nyquist entry is the mean POWER of the two, ``logaddexp(a_{+n/2}, a_{-n/2}) - log 2``
    (valid on log powers up to a per-channel constant, e.g. logits before the log_softmax), so a symmetric base
    spectrum stays symmetric. Odd ``n`` and ``n = base`` are exactly the plain crop (``n = base`` returns the input).

    Args:
        spectrum: log spectrum ``(..., base_h, base_w)`` in the FFT layout.
        height, width: target size, at most the base size.

    Returns:
        ``(..., height, width)``.
    """
    for dim, n in ((-2, height), (-1, width)):
        base = spectrum.shape[dim]
        if not 1 <= n <= base:
            raise ValueError(f"cannot crop a spectrum of size {base} to {n}; the target size must be in [1, {base}]")
        n_pos = (n + 1) // 2
        n_neg = n - n_pos
        pos = spectrum.narrow(dim, 0, n_pos)  # frequencies 0 .. ceil(n/2) - 1
        neg = spectrum.narrow(dim, base - n_neg, n_neg)  # frequencies -floor(n/2) .. -1
        if n % 2 == 0 and n < base:
            nyquist = torch.logaddexp(spectrum.narrow(dim, n // 2, 1), neg.narrow(dim, 0, 1)) - math.log(2)
            neg = torch.cat([nyquist, neg.narrow(dim, 1, n_neg - 1)], dim=dim)
        spectrum = torch.cat([pos, neg], dim=dim)
    return spectrum


class SpectrumMLP(nn.Module):
    """Predicts the log power spectrum of ``zeta`` from the Gaussian surrogate (docs/method.md, Sec. 2.3; Appendix A.3).

    ``Linear(2, 64) SiLU Linear(64, 8) SiLU Linear(8, C * base^2)``, reshaped to ``(C, base, base)`` in the FFT layout.
    Images smaller than ``base`` use the corner blocks of that spectrum (:func:`crop_spectrum`). The output is then
    ``log_softmax`` over the ``H W`` frequencies of each channel plus ``log(H W)``, so ``mean(exp(P)) = 1`` per channel
    exactly for any weights and any image size (cropping the logits then normalising equals normalising at the base
    size, cropping, and renormalising). The last Linear is zero-initialised, so the spectrum is white (``P = 0``) at
    init; the other Linears are xavier-uniform with zero bias, as in the reference implementation.

    Args:
        num_channels: ``C``.
        base_size: side of the predicted spectrum; images may be at most this large (32 for ImageNet latents).
        hidden: widths of the hidden layers.
    """

    def __init__(self, num_channels: int, base_size: int = 32, hidden: tuple[int, ...] = (64, 8)):
        super().__init__()
        if num_channels < 1 or base_size < 1:
            raise ValueError(f"num_channels and base_size must be >= 1, got {num_channels} and {base_size}")
        self.num_channels = num_channels
        self.base_size = base_size
        layers: list[nn.Module] = []
        width = 2
        for h in hidden:
            layers += [nn.Linear(width, h), nn.SiLU()]
            width = h
        layers.append(nn.Linear(width, num_channels * base_size * base_size))
        self.mlp = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.mlp[-1].weight)

    def forward(self, gaussian: IsoGaussian) -> Tensor:
        """Log power spectrum ``P`` for the surrogate ``gaussian``.

        Args:
            gaussian: x0-space surrogate, mean ``(B, C, H, W)``, var ``(B, 1, H, W)`` or ``(B, 1, 1, 1)``.

        Returns:
            ``P`` ``(B, C, H, W)`` in the network's dtype, FFT layout, ``mean_{h,w} exp(P) = 1`` per channel.
        """
        mean = gaussian.mean
        if mean.dim() != 4:
            raise ValueError(f"SpectrumMLP needs an image surrogate with mean (B, C, H, W), got {tuple(mean.shape)}")
        b, c, h, w = mean.shape
        if c != self.num_channels:
            raise ValueError(f"SpectrumMLP was built for {self.num_channels} channels, got C = {c}")
        if h > self.base_size or w > self.base_size or h * w < 2:
            raise ValueError(
                f"image size {h}x{w} does not fit SpectrumMLP(base_size={self.base_size}): need H, W <= base_size "
                "and at least 2 pixels; build the net with a larger base_size"
            )
        dtype = self.mlp[-1].weight.dtype
        stats = surrogate_stats(gaussian).to(dtype)  # (B, 2)
        spectrum = self.mlp(stats).view(b, c, self.base_size, self.base_size)  # (B, C, base, base)
        spectrum = crop_spectrum(spectrum, h, w)  # (B, C, H, W)
        log_power = F.log_softmax(spectrum.reshape(b, c, h * w), dim=-1) + math.log(h * w)  # (B, C, HW)
        return log_power.view(b, c, h, w)


# ------------------------------------------------------------------------------------------------------------------
# Spectral loss and sampler
# ------------------------------------------------------------------------------------------------------------------


def spectral_loss(log_power: Tensor, z_kr: Tensor, weight: float = 1.0) -> Tensor:
    """Spectral NLL per sample (docs/method.md, Sec. 3.5; Eq. 20 of the paper).

    With ``z_r = DHT(z_kr)``: ``L = w (C / 2) mean_{c,h,w}[z_r^2 (e^{-P} - 1) + P]``, which per pixel equals
    ``-log N(z_r; 0, diag e^P) + log N(z_r; 0, I)`` summed over channels. Its minimiser over ``P`` is
    ``P = log E[z_r^2]``. The mean over the batch is the reference code's loss; gradients reach only ``log_power``
    if ``z_kr`` is detached. Computed in at least float32.

    Args:
        log_power: ``P`` ``(B, C, H, W)``.
        z_kr: KR-transported field ``zeta`` ``(B, C, H, W)``.
        weight: ``w_spec`` (1.0 with this ``x C`` scaling).

    Returns:
        ``(B,)``.
    """
    dtype = torch.promote_types(torch.promote_types(log_power.dtype, z_kr.dtype), torch.float32)
    p = log_power.to(dtype)
    z_r = dht2(z_kr.to(dtype))  # (B, C, H, W)
    per_entry = z_r.square() * (torch.exp(-p) - 1) + p  # (B, C, H, W)
    return (0.5 * p.shape[1] * weight) * per_entry.mean(dim=(1, 2, 3))


def spectral_training_loss(
    spectrum_net: nn.Module, gm_u: GaussianMixture, x0: Tensor, x_t: Tensor, sigma: Tensor, weight: float = 1.0
) -> Tensor:
    """Spectral loss of one training batch; gradients reach ONLY ``spectrum_net`` (Appendix A.3 of the paper).

    Under ``no_grad``: the u-space surrogate ``N(m_u, v_u)`` is converted to x0 space as
    ``N(x_t - sigma m_u, sigma^2 v_u)``; the true velocity ``u* = (x_t - x0) / sigma`` is KR-transported under the
    u-space GM to ``z = gm_to_gaussian(gm_u, u*)``. Then ``L = spectral_loss(spectrum_net(surrogate), z)``.
    (Transporting ``u*`` under the u-GM instead of ``x0`` under the x0-GM flips the sign of ``z``, which the loss
    does not see.)

    Args:
        spectrum_net: e.g. :class:`SpectrumMLP`.
        gm_u: predicted velocity GM at ``(x_t, sigma)``, ``(B, K, C, H, W)``.
        x0: data ``(B, C, H, W)``.
        x_t: noisy input ``(B, C, H, W)`` (``x_high`` of the transition pair).
        sigma: ``(B,)`` or scalar noise level of ``x_t``.
        weight: ``w_spec``.

    Returns:
        ``(B,)``.
    """
    with torch.no_grad():
        gm = gm_u.to(torch.float32)
        x_t, x0 = x_t.detach().float(), x0.detach().float()
        s = bcast(torch.as_tensor(sigma).detach(), x_t.dim()).to(x_t)  # (B, 1, 1, 1)
        g_u = gm.iso_gaussian()
        surrogate = IsoGaussian(x_t - s * g_u.mean, s.square() * g_u.var)
        u_star = (x_t - x0) / s.clamp(min=EPS)  # (B, C, H, W)
        z = gm_to_gaussian(gm, u_star)  # (B, C, H, W)
    return spectral_loss(spectrum_net(surrogate), z, weight)


def spectral_x0_sampler(spectrum_net: nn.Module) -> X0Sampler:
    """Spectral sampling of ``x0^ ~ q(x0 | x_t)`` for GM-SDE (docs/method.md, Sec. 5.2; Fig. 9 of the paper).

    ``P = spectrum_net(target)``; ``S = eps * exp(P / 2)``; ``zeta = DHT(S)``; ``x0^ = gaussian_to_gm(gm, zeta)``.
    The target Gaussian is the one GM-SDE passes along (the surrogate, the guidance target or the 2nd-order target).

    Returns:
        a callable ``(gm_x0, target_gaussian, generator) -> x0^ (B, C, H, W)`` for ``sample_gm_sde(x0_sampler=...)``.
    """

    def sample(gm: GaussianMixture, target: IsoGaussian, generator: torch.Generator | None = None) -> Tensor:
        with torch.no_grad():
            log_power = spectrum_net(target)  # (B, C, H, W)
            zeta = sample_spectral_noise(log_power, generator)  # (B, C, H, W)
            return gaussian_to_gm(gm, zeta)

    return sample
