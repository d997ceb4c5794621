"""Spectral sampling and KR transport (gmflow/spectral.py): closed forms, brute force in float64, Monte Carlo moments.

docs/method.md, Sec. 2.3, 3.5, 4.3 and 5; Appendix A.3 of Chen et al. 2025.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import ndtr

from gmflow.gm import GaussianMixture, IsoGaussian
from gmflow.kr import gaussian_to_gm, gm_to_gaussian, kr_rotation
from gmflow.schedule import sigma_grid
from gmflow.solvers import sample_gm_sde
from gmflow.spectral import (
    SpectrumMLP,
    crop_spectrum,
    dht2,
    sample_spectral_noise,
    spectral_loss,
    spectral_training_loss,
    spectral_x0_sampler,
    surrogate_stats,
)

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def _seed_global_generator():
    """SpectrumMLP's xavier initialisation draws from the global generator: seed it in every test."""
    torch.manual_seed(0)


def _random_gm(b, k, c, spatial, spread=1.0, logstd=-1.0, dtype=F64, seed=0) -> GaussianMixture:
    g = _gen(seed)
    means = spread * torch.randn(b, k, c, *spatial, generator=g, dtype=dtype)
    logweights = torch.log_softmax(torch.randn(b, k, 1, *spatial, generator=g, dtype=dtype), dim=1)
    logstds = torch.full((b, 1, 1, *([1] * len(spatial))), logstd, dtype=dtype)
    return GaussianMixture(means, logweights, logstds)


def _dht_matrix(h, w):
    """The 2D DHT as an (HW x HW) matrix, built column by column from basis images."""
    eye = torch.eye(h * w, dtype=F64).reshape(h * w, h, w)
    return dht2(eye).reshape(h * w, h * w).T


# ---------------------------------------------------------------------------------------------------------------------
# DHT
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(8, 8), (6, 5), (7, 9), (1, 4)])
def test_dht_is_orthogonal_symmetric_and_self_inverse(size):
    m = _dht_matrix(*size)
    eye = torch.eye(m.shape[0], dtype=F64)
    torch.testing.assert_close(m @ m.T, eye, rtol=0, atol=1e-12)
    torch.testing.assert_close(m, m.T, rtol=0, atol=1e-12)
    x = torch.randn(3, 2, *size, generator=_gen(0), dtype=F64)
    torch.testing.assert_close(dht2(dht2(x)), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(dht2(x).square().sum(), x.square().sum())
    # closed form: cas kernel with the forward-FFT sign, DHT[k] = sum_n x[n] (cos - sin)(2 pi <k, n/N>) / sqrt(HW)
    h, w = size
    kh, kw = torch.meshgrid(torch.arange(h, dtype=F64), torch.arange(w, dtype=F64), indexing="ij")
    theta = 2 * math.pi * (kh.reshape(-1, 1) * kh.reshape(1, -1) / h + kw.reshape(-1, 1) * kw.reshape(1, -1) / w)
    torch.testing.assert_close(m, (torch.cos(theta) - torch.sin(theta)) / math.sqrt(h * w), rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", [(8, 8), (6, 5), (7, 9), (4, 1)])
def test_dht_equals_reference_irfft2_construction(size):
    """Reference construction: Z = ((S + S~) + i (S - S~)) / 2 on the half spectrum, S~[k] = S[-k mod N],
    zeta = irfft2(Z, norm='ortho')."""
    h, w = size
    s = torch.randn(2, 3, h, w, generator=_gen(1), dtype=F64)
    neg_h, neg_w = (-torch.arange(h)) % h, (-torch.arange(w)) % w
    s_tilde = s[..., neg_h, :][..., neg_w]
    half = w // 2 + 1
    z = torch.complex((s + s_tilde)[..., :half], (s - s_tilde)[..., :half]) / 2
    zeta_ref = torch.fft.irfft2(z, s=(h, w), norm="ortho")
    torch.testing.assert_close(dht2(s), zeta_ref, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# Spectral noise
# ---------------------------------------------------------------------------------------------------------------------


def test_white_spectrum_gives_iid_standard_normal_pixels():
    n, h, w = 20000, 6, 6
    zeta = sample_spectral_noise(torch.zeros(n, 1, h, w), _gen(2)).double()[:, 0]  # (N, H, W)
    tol = 5 / math.sqrt(n)
    assert zeta.mean(0).abs().max() < tol
    assert (zeta.var(0) - 1).abs().max() < 5 * math.sqrt(2 / n)
    for shifted in (zeta.roll(1, dims=1), zeta.roll(1, dims=2), zeta.roll((1, 1), dims=(1, 2))):
        assert (zeta * shifted).mean(0).abs().max() < tol  # neighbour correlation ~ 0
    assert stats.kstest(zeta[:, 2, 3].numpy(), "norm").pvalue > 1e-3


def test_non_white_spectrum_has_prescribed_power_and_covariance():
    n, c, h, w = 20000, 2, 5, 6
    logits = torch.randn(c, h, w, generator=_gen(3), dtype=F64)
    log_power = torch.log_softmax(logits.reshape(c, -1), -1).reshape(c, h, w) + math.log(h * w)
    zeta = sample_spectral_noise(log_power.expand(n, c, h, w), _gen(4))  # (N, C, H, W)
    assert zeta.dtype == F64
    power = dht2(zeta).square().mean(0)  # E[DHT(zeta)^2] = exp(P)
    assert ((power / log_power.exp() - 1).abs() < 5 * math.sqrt(2 / n)).all()
    # pixel covariance = M diag(e^P) M^T (M the DHT matrix); unit variance on average over pixels
    m = _dht_matrix(h, w)
    for ch in range(c):
        cov_true = m @ torch.diag(log_power[ch].reshape(-1).exp()) @ m.T
        flat = zeta[:, ch].reshape(n, -1)
        cov_mc = flat.T @ flat / n
        scale = torch.sqrt(torch.outer(cov_true.diagonal(), cov_true.diagonal()) + cov_true.square())
        assert ((cov_mc - cov_true).abs() / scale).max() < 5 / math.sqrt(n)
        torch.testing.assert_close(cov_true.diagonal().mean(), torch.tensor(1.0, dtype=F64))
        assert (cov_true - torch.diag(cov_true.diagonal())).abs().max() > 0.05  # spatially correlated


# ---------------------------------------------------------------------------------------------------------------------
# SpectrumMLP
# ---------------------------------------------------------------------------------------------------------------------


def _surrogate(b, c, h, w, per_pixel_var=True, seed=5):
    g = _gen(seed)
    mean = torch.randn(b, c, h, w, generator=g)
    var = torch.rand(b, 1, h, w, generator=g) + 0.1 if per_pixel_var else torch.rand(b, 1, 1, 1, generator=g) + 0.1
    return IsoGaussian(mean, var)


@pytest.mark.parametrize("size", [(8, 8), (5, 7), (8, 3), (2, 1)])
@pytest.mark.parametrize("per_pixel_var", [True, False])
def test_spectrum_mlp_is_white_at_init_and_always_normalised(size, per_pixel_var):
    torch.manual_seed(0)
    net = SpectrumMLP(3, base_size=8)
    g = _surrogate(4, 3, *size, per_pixel_var)
    log_power = net(g)
    assert log_power.shape == (4, 3, *size)
    assert (log_power == 0).all()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=_gen(6)))
    log_power = net(g)
    assert log_power.abs().max() > 0.1
    torch.testing.assert_close(log_power.exp().mean(dim=(-2, -1)), torch.ones(4, 3), rtol=0, atol=1e-5)


def _grid_freqs(n, base):
    """Base-grid frequencies that make up each FFT index of an n-grid (both +-n/2 for the Nyquist of an even n)."""
    out = []
    for i in range(n):
        f = i if i < (n + 1) // 2 else i - n
        out.append([f, -f] if (n % 2 == 0 and f == -n // 2 and n < base) else [f])
    return out


@pytest.mark.parametrize("size", [(8, 8), (5, 7), (6, 4), (3, 8), (2, 1)])
def test_spectrum_crop_keeps_the_fft_frequencies_of_the_smaller_grid(size):
    """With a constant spectrum g(f) over the base frequencies, entry (i, j) of the HxW output is the log mean power
    of g over the base frequencies that index (i, j) stands for (cycles per image; for an even size the Nyquist
    index stands for both +n/2 and -n/2), then normalised to mean power 1."""
    base, (h, w) = 8, size

    def g(fy, fx):
        return -0.1 * fy**2 - 0.2 * fx**2 + 0.05 * fy - 0.03 * fx

    fb = torch.fft.fftfreq(base, dtype=F64) * base
    net = SpectrumMLP(1, base_size=base).double()
    with torch.no_grad():
        net.mlp[-1].bias.copy_(g(fb[:, None], fb[None, :]).reshape(-1))
    mean = torch.randn(2, 1, h, w, dtype=F64, generator=_gen(40))
    log_power = net(IsoGaussian(mean, torch.ones(2, 1, 1, 1, dtype=F64)))
    expect = torch.zeros(h, w, dtype=F64)
    for i, fys in enumerate(_grid_freqs(h, base)):
        for j, fxs in enumerate(_grid_freqs(w, base)):
            expect[i, j] = math.log(np.mean([math.exp(g(fy, fx)) for fy in fys for fx in fxs]))
    expect = torch.log_softmax(expect.reshape(-1), 0).reshape(h, w) + math.log(h * w)
    torch.testing.assert_close(log_power[0, 0], expect)
    torch.testing.assert_close(log_power[1, 0], expect)
    torch.testing.assert_close(crop_spectrum(g(fb[:, None], fb[None, :]), base, base), g(fb[:, None], fb[None, :]))


@pytest.mark.parametrize("size", [(8, 8), (5, 7), (6, 3)])
def test_spectrum_crop_preserves_hermitian_symmetry(size):
    base, (h, w) = 10, size
    x = torch.randn(base, base, generator=_gen(7), dtype=F64)
    sym = x + x[(-torch.arange(base)) % base][:, (-torch.arange(base)) % base]  # P[k] = P[-k]
    out = crop_spectrum(sym, h, w)
    assert out.shape == (h, w)
    torch.testing.assert_close(out, out[(-torch.arange(h)) % h][:, (-torch.arange(w)) % w])
    torch.testing.assert_close(crop_spectrum(sym, base, base), sym)


def test_surrogate_stats_use_mean_var_and_unbiased_spatial_variance():
    g = _surrogate(3, 2, 4, 5)
    st = surrogate_stats(g)
    m = g.mean
    spatial_var = ((m - m.mean(dim=(2, 3), keepdim=True)).square().sum(dim=(2, 3)) / (4 * 5 - 1)).mean(1)
    torch.testing.assert_close(st, torch.stack([g.var.mean(dim=(1, 2, 3)), spatial_var], -1))
    g1 = IsoGaussian(g.mean, torch.full((3, 1, 1, 1), 0.3))
    torch.testing.assert_close(surrogate_stats(g1)[:, 0], torch.full((3,), 0.3))


def test_spectrum_mlp_rejects_images_larger_than_base():
    net = SpectrumMLP(1, base_size=8)
    with pytest.raises(ValueError, match="base_size"):
        net(_surrogate(1, 1, 16, 16))
    with pytest.raises(ValueError, match="channels"):
        net(_surrogate(1, 2, 8, 8))


# ---------------------------------------------------------------------------------------------------------------------
# KR transport
# ---------------------------------------------------------------------------------------------------------------------


def test_kr_rotation_sorts_eigenvectors_of_pixel_averaged_covariance_descending():
    gm = _random_gm(2, 4, 3, (3, 2), spread=1.5, logstd=-0.5)
    rot = kr_rotation(gm)
    for b in range(2):
        cov = torch.zeros(3, 3, dtype=F64)
        n = 0
        for i in range(3):
            for j in range(2):
                wts = gm.logweights[b, :, 0, i, j].exp()
                mu = gm.means[b, :, :, i, j]  # (K, C)
                d = mu - (wts[:, None] * mu).sum(0)
                cov += (wts[:, None, None] * d[:, :, None] * d[:, None, :]).sum(0) + gm.var[b].squeeze() * torch.eye(3)
                n += 1
        cov /= n
        r = rot[b]
        torch.testing.assert_close(r.T @ r, torch.eye(3, dtype=F64))
        lam = r.T @ cov @ r
        torch.testing.assert_close(lam, torch.diag(lam.diagonal()), rtol=0, atol=1e-10)
        assert (lam.diagonal()[:-1] > lam.diagonal()[1:]).all()
        assert (r.gather(0, r.abs().argmax(0, keepdim=True)) > 0).all()  # sign convention


@pytest.mark.parametrize("c", [1, 2, 4])
def test_kr_with_one_component_is_the_affine_map(c):
    gm = _random_gm(3, 1, c, (4, 5), spread=2.0, logstd=-0.3)
    zeta = torch.randn(3, c, 4, 5, generator=_gen(8), dtype=F64)
    rot = kr_rotation(gm)
    expect = gm.means[:, 0] + gm.logstds[:, 0].exp() * torch.einsum("bcd,bdhw->bchw", rot, zeta)
    x = gaussian_to_gm(gm, zeta)
    torch.testing.assert_close(x, expect, rtol=0, atol=1e-10)
    torch.testing.assert_close(gm_to_gaussian(gm, x), zeta, rtol=0, atol=1e-8)


def test_kr_1d_is_the_exact_inverse_cdf():
    """C = 1: gaussian_to_gm solves CDF(x) = Phi(zeta) per pixel; compared with 200-step bisection in float64."""
    gm = _random_gm(4, 3, 1, (8, 8), spread=1.0, logstd=math.log(0.4), seed=9)
    zeta = torch.randn(4, 1, 8, 8, generator=_gen(10), dtype=F64).clamp(-4, 4)
    x = gaussian_to_gm(gm, zeta).numpy()[:, 0]
    mu, wts, s = gm.means.numpy()[:, :, 0], gm.logweights.exp().numpy()[:, :, 0], 0.4
    target = ndtr(zeta.numpy()[:, 0])
    lo, hi = np.full(target.shape, -50.0), np.full(target.shape, 50.0)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        below = (wts * ndtr((mid[:, None] - mu) / s)).sum(1) < target
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    np.testing.assert_allclose(x, 0.5 * (lo + hi), rtol=0, atol=1e-9)


@pytest.mark.parametrize("c,dtype,atol", [(1, F64, 1e-9), (3, F64, 1e-8), (4, torch.float32, 2e-3)])
def test_kr_round_trip(c, dtype, atol):
    gm = _random_gm(3, 4, c, (6, 6), spread=1.0, logstd=-0.7, dtype=dtype, seed=11)
    z = torch.randn(3, c, 6, 6, generator=_gen(12), dtype=dtype).clamp(-3.5, 3.5)
    x = gaussian_to_gm(gm, z)
    assert x.dtype == dtype and x.shape == z.shape
    torch.testing.assert_close(gm_to_gaussian(gm, x), z, rtol=0, atol=atol)
    torch.testing.assert_close(gaussian_to_gm(gm, gm_to_gaussian(gm, x)), x, rtol=0, atol=atol)


@pytest.mark.parametrize("c", [2, 3])
def test_kr_pushforward_of_standard_normal_is_the_gm(c):
    """Monte Carlo in float32: per-axis KS tests against the exact marginal in rotated coordinates, component
    frequencies, mean and covariance of a GM with separated components."""
    n, k, s = 20000, 3, 0.6
    base = _random_gm(1, k, c, (1, 1), spread=2.5, logstd=math.log(s), dtype=torch.float32, seed=13)
    base = GaussianMixture(base.means, torch.log(torch.tensor([0.5, 0.3, 0.2])).reshape(1, k, 1, 1, 1), base.logstds)
    gm = GaussianMixture(base.means.expand(n, -1, -1, -1, -1), base.logweights.expand(n, -1, -1, -1, -1),
                         base.logstds.expand(n, -1, -1, -1, -1))  # fmt: skip
    x = gaussian_to_gm(gm, torch.randn(n, c, 1, 1, generator=_gen(14))).double()[:, :, 0, 0]  # (N, C)
    mu, wts = base.means[0, :, :, 0, 0].double(), base.logweights[0, :, 0, 0, 0].exp().double()  # (K, C), (K,)
    rot = kr_rotation(base)[0].double()
    y, mu_rot = x @ rot, mu @ rot
    for d in range(c):

        def cdf(v, d=d):
            return (wts.numpy() * ndtr((v[:, None] - mu_rot[:, d].numpy()) / s)).sum(1)

        assert stats.kstest(y[:, d].numpy(), cdf).pvalue > 1e-3
    # component frequencies: nearest-responsibility labels of KR samples vs pixel-wise GM samples
    x_ref = gm.sample(_gen(15)).double()[:, :, 0, 0]

    def labels(v):
        return ((v[:, None] - mu[None]).square().sum(-1) / (-2 * s * s) + wts.log()).argmax(1)

    freq, freq_ref = (torch.bincount(labels(v), minlength=k).double() / n for v in (x, x_ref))
    assert (freq - freq_ref).abs().max() < 5 * math.sqrt(2 * 0.25 / n)
    mean = (wts[:, None] * mu).sum(0)
    cov = (wts[:, None, None] * (mu - mean)[:, :, None] * (mu - mean)[:, None, :]).sum(0) + s * s * torch.eye(c)
    std = cov.diagonal().sqrt()
    assert ((x.mean(0) - mean).abs() / std).max() < 5 / math.sqrt(n)
    assert ((torch.cov(x.T) - cov).abs() / torch.outer(std, std)).max() < 0.05


# ---------------------------------------------------------------------------------------------------------------------
# Spectral loss
# ---------------------------------------------------------------------------------------------------------------------


def test_spectral_loss_matches_eq20_and_is_minimised_at_the_log_power():
    n, c, h, w = 4000, 2, 6, 6
    true_p = torch.log_softmax(torch.randn(c, h * w, generator=_gen(16), dtype=F64), -1).reshape(c, h, w)
    true_p = true_p + math.log(h * w)
    z_kr = sample_spectral_noise(true_p.expand(n, c, h, w), _gen(17))  # spatially correlated
    z_r = dht2(z_kr)
    # Eq. 20: per pixel, -log N(z_r; 0, e^P) + log N(z_r; 0, 1) summed over channels, averaged over pixels
    p = true_p.expand(n, c, h, w)
    nll = -torch.distributions.Normal(0, (0.5 * p).exp()).log_prob(z_r) + torch.distributions.Normal(0, 1).log_prob(z_r)
    loss = spectral_loss(p, z_kr)
    assert loss.shape == (n,)
    torch.testing.assert_close(loss, nll.sum(1).mean(dim=(1, 2)))
    torch.testing.assert_close(spectral_loss(torch.zeros_like(p), z_kr), torch.zeros(n, dtype=F64))
    # minimiser of the batch mean is P* = log E[z_r^2]: zero gradient, lower than white and than the true P
    p_opt = z_r.square().mean(0).log().requires_grad_(True)
    loss_opt = spectral_loss(p_opt.expand(n, c, h, w), z_kr).mean()
    (grad,) = torch.autograd.grad(loss_opt, p_opt)
    assert grad.abs().max() < 1e-5
    assert loss_opt < spectral_loss(p, z_kr).mean() < 0
    assert loss_opt < spectral_loss(torch.zeros_like(p), z_kr).mean()


def _tiny_gm_u(x_t, k=3, seed=18):
    """A fixed random u-space GM that depends on x_t pixel-wise (means a_k x_t + b_k)."""
    g = _gen(seed)
    c, h, w = x_t.shape[1:]
    a = 0.5 * torch.randn(k, c, 1, 1, generator=g)
    b = torch.randn(k, c, h, w, generator=g)
    logits = torch.randn(k, 1, h, w, generator=g)
    means = a * x_t.unsqueeze(1) + b  # (B, K, C, H, W)
    logweights = torch.log_softmax(logits, 0).expand(x_t.shape[0], -1, -1, -1, -1)
    return GaussianMixture(means, logweights, torch.full((x_t.shape[0], 1, 1, 1, 1), math.log(0.7)))


def test_spectral_training_loss_only_trains_the_spectrum_net():
    b, c, h, w = 3, 2, 8, 8
    x0 = torch.randn(b, c, h, w, generator=_gen(19))
    sigma = torch.tensor([0.2, 0.5, 0.9])
    x_t = (1 - sigma[:, None, None, None]) * x0 + sigma[:, None, None, None] * torch.randn(x0.shape, generator=_gen(20))
    x_t.requires_grad_(True)
    gm = _tiny_gm_u(x_t.detach())
    gm_u = GaussianMixture(*(t.clone().requires_grad_(True) for t in (gm.means, gm.logweights, gm.logstds)))
    net = SpectrumMLP(c, base_size=8)
    with torch.no_grad():
        net.mlp[-1].weight.normal_(generator=_gen(21))
    loss = spectral_training_loss(net, gm_u, x0, x_t, sigma)
    assert loss.shape == (b,) and torch.isfinite(loss).all()
    loss.sum().backward()
    assert gm_u.means.grad is None and gm_u.logweights.grad is None and gm_u.logstds.grad is None
    assert x_t.grad is None
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert net.mlp[-1].weight.grad.abs().sum() > 0
    # value: the surrogate is converted to x0 space, u* = (x_t - x0) / sigma is transported under the u-GM
    with torch.no_grad():
        s = sigma[:, None, None, None]
        g_u = gm.iso_gaussian()
        expect = spectral_loss(
            net(IsoGaussian(x_t - s * g_u.mean, s.square() * g_u.var)), gm_to_gaussian(gm, (x_t - x0) / s)
        )
        torch.testing.assert_close(loss.detach(), expect)
        one = spectral_training_loss(net, GaussianMixture(gm.means[1:2], gm.logweights[1:2], gm.logstds[1:2]),
                                     x0[1:2], x_t[1:2], sigma[1:2])  # fmt: skip
        torch.testing.assert_close(one, loss[1:2].detach())  # per-sample values


# ---------------------------------------------------------------------------------------------------------------------
# GM-SDE with spectral sampling
# ---------------------------------------------------------------------------------------------------------------------


def _model_fn(x_t, sigma):
    return _tiny_gm_u(x_t)


def _np_dht2(x: np.ndarray) -> np.ndarray:
    """The 2D DHT by its definition: sum_n x[n] (cos - sin)(2 pi <k, n/N>) / sqrt(HW) over the last two axes."""
    h, w = x.shape[-2:]
    kh, kw = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    kh, kw = kh.reshape(-1), kw.reshape(-1)
    theta = 2 * np.pi * (np.outer(kh, kh) / h + np.outer(kw, kw) / w)
    m = (np.cos(theta) - np.sin(theta)) / np.sqrt(h * w)
    return (x.reshape(*x.shape[:-2], h * w) @ m.T).reshape(x.shape)


def _np_inverse_cdf(means: np.ndarray, wts: np.ndarray, std: np.ndarray, zeta: np.ndarray) -> np.ndarray:
    """Per pixel of a C = 1 GM (means, weights (B, K, H, W), std (B,)): the x with CDF(x) = Phi(zeta), by 200-step
    bisection in float64."""
    target = ndtr(zeta)  # (B, H, W)
    sd = std.reshape(-1, 1, 1, 1)
    lo, hi = np.full(target.shape, -60.0), np.full(target.shape, 60.0)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        below = (wts * ndtr((mid[:, None] - means) / sd)).sum(1) < target
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def _np_spectrum(net: SpectrumMLP, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """SpectrumMLP written out in numpy from its parameters (image size = base size, so no crop): the stats (mean of
    the variance, channel-averaged unbiased spatial variance of the mean), the Linear / SiLU stack, then
    log_softmax over the H W frequencies + log(H W)."""
    b, c, h, w = mean.shape
    z = np.stack([np.broadcast_to(var, (b, 1, h, w)).reshape(b, -1).mean(1), mean.var(axis=(2, 3), ddof=1).mean(1)],
                 axis=1)  # fmt: skip
    for layer in net.mlp:
        if isinstance(layer, torch.nn.Linear):
            z = z @ layer.weight.detach().double().numpy().T + layer.bias.detach().double().numpy()
        else:
            assert isinstance(layer, torch.nn.SiLU)
            z = z / (1 + np.exp(-z))
    logits = z.reshape(b, c, h * w)
    logits = logits - logits.max(-1, keepdims=True)
    return (logits - np.log(np.exp(logits).sum(-1, keepdims=True)) + np.log(h * w)).reshape(b, c, h, w)


def _np_spectral_gm_sde(net, x_init, nfe, generator):
    """First-order GM-SDE with spectral x0 sampling in float64 for the C = 1 model _model_fn, drawing the solver's
    random numbers in its order (the spectral N(0, I), then the transition N(0, I))."""
    x = x_init.double().numpy()
    sig = [1 - i / nfe for i in range(nfe)] + [0.0]
    for i in range(nfe):
        s, s_to = sig[i], sig[i + 1]
        gm_u = _model_fn(torch.from_numpy(x).float(), None)
        means = x[:, None] - s * gm_u.means.double().numpy()  # (B, K, 1, H, W) x0-space
        wts = np.exp(gm_u.logweights.double().numpy())[:, :, 0]  # (B, K, H, W)
        std = s * np.exp(gm_u.logstds.double().numpy()).reshape(-1)
        m = (wts[:, :, None] * means).sum(1)  # (B, 1, H, W)
        v = (wts[:, :, None] * (means - m[:, None]) ** 2).sum(1).mean(1, keepdims=True) + std.reshape(-1, 1, 1, 1) ** 2
        p = _np_spectrum(net, m, v)
        eps = torch.randn(x.shape, generator=generator).double().numpy()
        x0 = _np_inverse_cdf(means[:, :, 0], wts, std, _np_dht2(eps * np.exp(0.5 * p))[:, 0])[:, None]
        a, a_to = 1 - s, 1 - s_to  # q(x_to | x_t, x0) by conditioning the forward chain x_to -> x_t on x0
        rho = a / a_to
        c1 = rho * s_to**2 / s**2
        c2, c3 = a_to - c1 * a, s_to**2 - c1 * rho * s_to**2
        noise = torch.randn(x.shape, generator=generator).double().numpy()
        x = c1 * x + c2 * x0 + np.sqrt(max(c3, 0.0)) * noise
    return x


def test_gm_sde_with_spectral_sampling_matches_reference():
    """Truth: the numpy float64 reference above (the spectrum net, the DHT and the KR inverse CDF all written out)
    with the same random numbers, at NFE 1 (x0 itself) and NFE 2 (one transition step with c3 > 0); at NFE 1 the
    second-order solver only fills its cache and its target has the same mean variance, so GM-SDE 2 gives the same
    sample. The run is reproducible for a fixed generator."""
    net = SpectrumMLP(1, base_size=8)
    with torch.no_grad():
        net.mlp[-1].weight.normal_(generator=_gen(22))
        net.mlp[-1].bias.normal_(generator=_gen(23))
    sampler = spectral_x0_sampler(net)
    x_init = torch.randn(2, 1, 8, 8, generator=_gen(24))
    for nfe in (1, 2):
        ref = _np_spectral_gm_sde(net, x_init, nfe, _gen(25))
        out = sample_gm_sde(_model_fn, x_init, sigma_grid(nfe), generator=_gen(25), x0_sampler=sampler)
        np.testing.assert_allclose(out.double().numpy(), ref, rtol=0, atol=2e-4)
        again = sample_gm_sde(_model_fn, x_init, sigma_grid(nfe), generator=_gen(25), x0_sampler=sampler)
        torch.testing.assert_close(out, again, rtol=0, atol=0)
    ref1 = _np_spectral_gm_sde(net, x_init, 1, _gen(25))
    out2 = sample_gm_sde(_model_fn, x_init, sigma_grid(1), generator=_gen(25), order=2, x0_sampler=sampler)
    np.testing.assert_allclose(out2.double().numpy(), ref1, rtol=0, atol=2e-4)


def test_spectral_x0_sampler_composes_net_noise_and_kr():
    """Truth (numpy float64): P = log_softmax(bias) + log(HW) from the net's last bias (its weight is zero), S the
    sampler's own N(0, 1) draw times e^{P/2} (same generator), zeta by the explicit cas sum, and x0 the per-pixel
    inverse CDF of the K = 2, C = 1 GM at Phi(zeta) by bisection."""
    gm = _random_gm(2, 2, 1, (8, 8), spread=1.0, logstd=-0.5, dtype=torch.float32, seed=26)
    net = SpectrumMLP(1, base_size=8)
    with torch.no_grad():
        net.mlp[-1].bias.normal_(generator=_gen(27))
    x0 = spectral_x0_sampler(net)(gm, gm.iso_gaussian(), _gen(28))
    logits = net.mlp[-1].bias.detach().double().numpy()
    p = (logits - np.log(np.exp(logits).sum()) + np.log(64)).reshape(1, 1, 8, 8)
    eps = torch.randn(2, 1, 8, 8, generator=_gen(28)).double().numpy()
    zeta = _np_dht2(eps * np.exp(0.5 * p))[:, 0]
    wts = np.exp(gm.logweights.double().numpy())[:, :, 0]
    expect = _np_inverse_cdf(gm.means.double().numpy()[:, :, 0], wts, np.exp(gm.logstds.double().numpy()).reshape(-1),
                             zeta)  # fmt: skip
    np.testing.assert_allclose(x0.double().numpy()[:, 0], expect, rtol=0, atol=2e-4)


def test_white_spectral_gm_sde_matches_pixelwise_gm_sde():
    """With P = 0, zeta is i.i.d. N(0, 1) and the KR pushforward is the pixel-wise GM: same output distribution."""
    n = 6000
    x_init = torch.randn(n, 1, 2, 2, generator=_gen(29))
    sigmas = sigma_grid(4)
    ref = sample_gm_sde(_model_fn, x_init, sigmas, generator=_gen(30)).double()
    spec = sample_gm_sde(
        _model_fn, x_init, sigmas, generator=_gen(31), x0_sampler=spectral_x0_sampler(SpectrumMLP(1, base_size=4))
    ).double()
    for i in range(2):
        for j in range(2):
            a, b = ref[:, 0, i, j], spec[:, 0, i, j]
            assert stats.ks_2samp(a.numpy(), b.numpy()).pvalue > 1e-3
            assert abs(a.mean() - b.mean()) < 5 * math.sqrt(2 / n) * a.std()
            assert abs(a.std() / b.std() - 1) < 5 * math.sqrt(1 / n)
    corr = torch.corrcoef(spec.reshape(n, 4).T)
    corr_ref = torch.corrcoef(ref.reshape(n, 4).T)
    assert (corr - corr_ref).abs().max() < 10 / math.sqrt(n)
