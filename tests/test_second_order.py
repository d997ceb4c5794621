"""The guided second-order GM step (gmflow/solvers.py: GM-ODE 2 and GM-SDE 2) against a float64 reference written here.

The reference follows the probabilistic guidance and the second-order multistep extrapolation of Chen et al. 2025
(Sec. 3.3, Eq. 15-16 and Appendix A.2), in the form of the authors' implementation, and shares no code with the
library:

- guidance: conditional surrogate ``(m_c, v_c)`` with ``v_c`` averaged over pixels, ``Delta = m_c - m_u`` projected
  off ``m_c``, bias ``b = w~ sqrt(v_c / mean(Delta^2)) Delta``, target ``N(m_c + b, (1 - w~^2) v_c)``;
- the Gaussian mask ``G x N_target / N_base`` in natural parameters (precision ``1/s^2 + 1/v_t - 1/v_b``, weights
  from completing the square), not through a ratio Gaussian as the library does;
- ``mu-``: the previous (guided, not extrapolated) GM re-conditioned to the current state through the likelihood
  ratio written as a Gaussian in x0 (mean ``(a_t s_s^2 x_t - a_s s_t^2 x_s) / den``, variance ``(s_t s_s)^2 / den``,
  ``den = (a_t s_s)^2 - (a_s s_t)^2``) and a textbook Gaussian product, not the library's natural-parameter form;
- ``Delta mu = (mu+ - mu-) (h / 2 h_prev) sqrt(max(0, 1 - v ((w~ cb)^2 + ca) / h_prev^2))``; ``B = Delta mu + b``,
  rescaled to RMS at most ``sqrt(v)``; target ``N(m_base + B, v max(1 - P / v, 1e-6))`` applied to the UNGUIDED
  conditional GM when guided;
- GM-SDE transition coefficients from joint-Gaussian conditioning of the forward chain.

The models are deliberately inexact (distorted, time-inconsistent posteriors), so ``mu+ != mu-`` and every term
matters. Each test also checks that its setting discriminates: the reference with the guidance bias dropped from
``B``, or with the ``(w~ cb)^2`` term dropped from the damping, lands far outside the tolerance.
"""

import math

import numpy as np
import pytest
import torch
from oracles import F64, GMData, random_gm, seeded

from gmflow.gm import GaussianMixture
from gmflow.guidance import GMPrediction, guided_gm_prediction, probabilistic_guidance
from gmflow.schedule import sigma_grid
from gmflow.solvers import SecondOrderCache, gm_ode_2, gm_sde_2, second_order_gm

CA, CB = 0.005, 1.0

# ---------------------------------------------------------------------------------------------------------------------
# float64 reference
# ---------------------------------------------------------------------------------------------------------------------


def _ps(v: torch.Tensor, nd: int) -> torch.Tensor:
    """A per-sample (B,) value shaped (B, 1, ..., 1) with nd dims."""
    return v.reshape(-1, *([1] * (nd - 1)))


def _smean(t: torch.Tensor) -> torch.Tensor:
    """Mean over all but the batch dimension: (B,)."""
    return t.reshape(t.shape[0], -1).mean(1)


class RefGM:
    """A float64 GM: means (B, K, C, *S), logweights (B, K, 1, *S) normalised, one variance per sample (B,)."""

    def __init__(self, means, logweights, var):
        self.means = means.to(F64)
        self.logw = torch.log_softmax(logweights.to(F64), dim=1)
        self.var = var.to(F64).reshape(-1)

    @classmethod
    def of(cls, gm: GaussianMixture) -> "RefGM":
        return cls(gm.means, gm.logweights, torch.exp(2 * gm.logstds.to(F64)).reshape(-1))

    def mean(self) -> torch.Tensor:
        return (self.logw.exp() * self.means).sum(1)

    def surrogate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Moment-matched mean (B, C, *S) and the per-pixel variance averaged over pixels (B,)."""
        w = self.logw.exp()
        m = (w * self.means).sum(1)
        spread = (w * (self.means - m.unsqueeze(1)).square()).sum(1).mean(1)  # (B, *S): (1/C) sum_k A_k |mu_k - m|^2
        return m, _smean(spread) + self.var


def ref_u_to_x0(means_u, logw, logstd, x, sigma) -> RefGM:
    """x0 = x_t - sigma u: means x_t - sigma mu_k, std sigma s."""
    nd = x.dim()
    s = _ps(sigma.to(F64), nd)
    means = x.to(F64).unsqueeze(1) - s.unsqueeze(1) * means_u.to(F64)
    var = (sigma.to(F64) * torch.exp(logstd.to(F64).reshape(-1))).square()
    return RefGM(means, logw, var)


def ref_mask(gm: RefGM, m_b, v_b, m_t, v_t) -> RefGM:
    """Renormalised G(x) N(x; m_t, v_t) / N(x; m_b, v_b) in natural parameters (per channel, shared variance)."""
    nd = gm.means.dim()
    s2 = _ps(gm.var, nd)
    a = _ps(1 / v_t - 1 / v_b, nd - 1)  # extra precision of the mask, (B, 1, *1)
    b = m_t / _ps(v_t, nd - 1) - m_b / _ps(v_b, nd - 1)  # extra natural mean, (B, C, *S)
    lam = 1 / s2 + a.unsqueeze(1)  # (B, 1, 1, *1)
    eta = gm.means / s2 + b.unsqueeze(1)  # (B, K, C, *S)
    logits = gm.logw + (eta.square() / (2 * lam) - gm.means.square() / (2 * s2)).sum(2, keepdim=True)
    return RefGM(eta / lam, logits, (1 / lam).reshape(-1))


def ref_recondition_mean(gm: RefGM, x_src, s_src: float, x_tgt, s_tgt: float) -> torch.Tensor:
    """E[x0] under G(x0) N(x_tgt; a_t x0, s_t^2) / N(x_src; a_s x0, s_s^2): the ratio is N(x0; g_mean, g_var)."""
    a_s, a_t = 1 - s_src, 1 - s_tgt
    den = (a_t * s_src) ** 2 - (a_s * s_tgt) ** 2
    g_mean = (a_t * s_src**2 * x_tgt.to(F64) - a_s * s_tgt**2 * x_src.to(F64)) / den
    g_var = (s_tgt * s_src) ** 2 / den
    nd = gm.means.dim()
    s2 = _ps(gm.var, nd)
    tot = s2 + g_var
    means = (g_var * gm.means + s2 * g_mean.unsqueeze(1)) / tot
    logits = gm.logw - (gm.means - g_mean.unsqueeze(1)).square().sum(2, keepdim=True) / (2 * tot)
    return (torch.softmax(logits, dim=1) * means).sum(1)


def ref_guidance(gm_c: RefGM, m_u, w: float, o: float = 1.0) -> dict:
    """Probabilistic guidance: the guided GM, its bias, the base Gaussian and the target."""
    m_c, v_c = gm_c.surrogate()
    nd = m_c.dim()
    delta = m_c - m_u.to(F64)
    coef = _smean(delta * m_c) / _smean(m_c * m_c).clamp(min=1e-6)
    delta = delta - o * _ps(coef, nd) * m_c
    bias = _ps(w * torch.sqrt(v_c / _smean(delta.square()).clamp(min=1e-6)), nd) * delta
    m_t, v_t = m_c + bias, (1 - w * w) * v_c
    guided = ref_mask(gm_c, m_c, v_c, m_t, v_t) if w > 0 else gm_c
    return {"gm": guided, "base": gm_c, "m_base": m_c, "v": v_c, "bias": bias, "target": (m_t, v_t), "w": w}


def ref_unguided(gm: RefGM) -> dict:
    m, v = gm.surrogate()
    return {"gm": gm, "base": gm, "m_base": m, "v": v, "bias": None, "target": (m, v), "w": 0.0}


def ref_second_order(pred: dict, prev: dict | None, x_t, s: float, h: float, drop=()) -> tuple[RefGM, tuple, dict]:
    """One second-order step. ``drop`` may hold "bias" (guidance bias left out of B) or "cb" (no (w~ cb)^2 term in
    the damping): the two errors the tests must be able to see. Returns the GM, its target and diagnostics."""
    new_prev = {"gm": pred["gm"], "x": x_t, "s": s, "h": h}
    if prev is None:
        return pred["gm"], pred["target"], {"prev": new_prev}
    nd = x_t.dim()
    v = pred["v"]
    mean_plus = pred["gm"].mean()
    mean_minus = ref_recondition_mean(prev["gm"], prev["x"], prev["s"], x_t, s)
    gw = 0.0 if "cb" in drop else pred["w"] * CB
    damp = (1 - v * (gw**2 + CA) / prev["h"] ** 2).clamp(min=0).sqrt()  # (B,)
    big_b = (mean_plus - mean_minus) * _ps(damp * 0.5 * h / prev["h"], nd)
    if pred["bias"] is not None and "bias" not in drop:
        big_b = big_b + pred["bias"]
    power = _smean(big_b.square())
    big_b = big_b * _ps(torch.sqrt((v / power.clamp(min=1e-6)).clamp(max=1)), nd)
    m_t, v_t = pred["m_base"] + big_b, v * (1 - power / v).clamp(min=1e-6)
    out = ref_mask(pred["base"], pred["m_base"], v, m_t, v_t)
    return out, (m_t, v_t), {"prev": new_prev, "damp": damp, "rel_power": power / v}


def ref_transition(s: float, s_to: float) -> tuple[float, float, float]:
    """(c1, c2, c3) of q(x_to | x_t, x0) = N(c1 x_t + c2 x0, c3) by conditioning the forward chain
    x_to = a_to x0 + s_to e0, x_t = (a/a_to) x_to + q e1 on x0 (Schur complement)."""
    a, a_to = 1 - s, 1 - s_to
    rho = a / a_to
    q2 = s**2 - rho**2 * s_to**2
    var_to, cov, var_t = s_to**2, rho * s_to**2, rho**2 * s_to**2 + q2
    c1 = cov / var_t
    return c1, a_to - c1 * a, var_to - c1 * cov


# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------


def _assert_gm_close(gm: GaussianMixture, ref: RefGM, atol: float):
    torch.testing.assert_close(gm.means.to(F64), ref.means, rtol=0, atol=atol)
    torch.testing.assert_close(gm.logweights.exp().to(F64), ref.logw.exp(), rtol=0, atol=atol)
    torch.testing.assert_close(torch.exp(2 * gm.logstds.to(F64)).reshape(-1), ref.var, rtol=atol, atol=0)


def _max_diff(a: RefGM, b: RefGM) -> float:
    return max(float((a.means - b.means).abs().max()), float((a.logw.exp() - b.logw.exp()).abs().max()))


# ---------------------------------------------------------------------------------------------------------------------
# one step of second_order_gm
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c,spatial", [(2, ()), (2, (3, 3))])
@pytest.mark.parametrize("w", [0.0, 0.35, 0.6])
def test_second_order_step_matches_reference(c, spatial, w):
    """Truth: the float64 reference above, one step after the cache was filled at (x_prev, 0.6, h_prev = 0.2), at
    (x_t, 0.4, h = 0.15), for an unguided (w~ = 0) and guided prediction whose GM is unrelated to the previous one.
    The first call must return the (guided) GM and its target unchanged. The damping factor lies inside (0.2, 0.95)
    so that its (w~ cb)^2 term is visible, and B stays below the variance for some samples (no rescale)."""
    b, k = 4, 3
    gm_prev = random_gm(b, k, c, spatial, spread=0.2, logstd=-1.9, seed=40)
    g = seeded(41)
    gm_now = GaussianMixture(gm_prev.means + 0.15 * torch.randn(gm_prev.means.shape, generator=g, dtype=F64),
                             torch.log_softmax(gm_prev.logweights + 0.5 * torch.randn(gm_prev.logweights.shape,
                                                                                      generator=g, dtype=F64), 1),
                             gm_prev.logstds + 0.1)
    m_u_prev, m_u_now = (0.6 * torch.randn(b, c, *spatial, generator=g, dtype=F64) for _ in range(2))
    x_prev = torch.randn(b, c, *spatial, generator=g, dtype=F64)
    x_t = x_prev + 0.2 * torch.randn(b, c, *spatial, generator=g, dtype=F64)
    s_prev, h_prev, s, h = 0.6, 0.2, 0.4, 0.15

    def lib_pred(gm, m_u):
        return probabilistic_guidance(gm, m_u, w) if w > 0 else GMPrediction(gm=gm)

    def ref_pred(gm, m_u):
        return ref_guidance(RefGM.of(gm), m_u, w) if w > 0 else ref_unguided(RefGM.of(gm))

    cache = SecondOrderCache()
    out0, tgt0 = second_order_gm(lib_pred(gm_prev, m_u_prev), x_prev, torch.tensor(s_prev, dtype=F64),
                                 torch.tensor(h_prev, dtype=F64), cache, CA, CB)
    r_prev = ref_pred(gm_prev, m_u_prev)
    ref0, rtgt0, diag = ref_second_order(r_prev, None, x_prev, s_prev, h_prev)
    _assert_gm_close(out0, ref0, 1e-10)
    torch.testing.assert_close(tgt0.mean, rtgt0[0], rtol=0, atol=1e-10)

    out, tgt = second_order_gm(lib_pred(gm_now, m_u_now), x_t, torch.tensor(s, dtype=F64), torch.tensor(h, dtype=F64),
                               cache, CA, CB)
    r_now = ref_pred(gm_now, m_u_now)
    ref, (m_t, v_t), d = ref_second_order(r_now, diag["prev"], x_t, s, h)
    _assert_gm_close(out, ref, 1e-9)
    torch.testing.assert_close(tgt.mean, m_t, rtol=0, atol=1e-9)
    torch.testing.assert_close(tgt.var.reshape(-1).to(F64), v_t, rtol=1e-9, atol=0)
    assert bool((d["rel_power"] < 1).any()), "B must stay below the variance somewhere (else it is only rescaled)"
    if w > 0:
        assert bool(((d["damp"] > 0.2) & (d["damp"] < 0.95)).all()), d["damp"]
        for drop in ("bias", "cb"):
            ablated, _, _ = ref_second_order(r_now, diag["prev"], x_t, s, h, drop=(drop,))
            assert _max_diff(ablated, ref) > 1e-3, f"dropping {drop} must change the step"
    else:
        assert bool((d["damp"] > 0.5).all()), d["damp"]


# ---------------------------------------------------------------------------------------------------------------------
# trajectories with an inexact, guided model
# ---------------------------------------------------------------------------------------------------------------------

COND = GMData(torch.tensor([[-1.0, 0.5], [1.0, 0.8], [0.2, -1.0]]), torch.log(torch.tensor([0.5, 0.3, 0.2])), 0.25)
UNCOND = GMData(torch.tensor([[-1.0, 0.5], [1.0, 0.8], [0.2, -1.0], [0.0, 1.6]]), torch.zeros(4), 0.4)


def _cond_u(x, sigma):
    """An inexact conditional velocity GM: the exact posterior of COND with means and std distorted in a
    time-dependent way (so consecutive predictions are inconsistent and mu+ != mu-)."""
    ex = COND.posterior_u(x, sigma)
    s = sigma.to(ex.means.dtype).reshape(-1, 1, 1)
    return GaussianMixture(ex.means * (1 + 0.4 * s) + 0.1, ex.logweights, ex.logstds + 0.25 * s)  # 2D: (B, 1, 1)


def _uncond_u(x, sigma):
    return UNCOND.posterior_u(x, sigma)


def _lib_model(w):
    def model_fn(x, sigma):
        return guided_gm_prediction(_cond_u(x, sigma), _uncond_u(x, sigma), x, sigma, "probabilistic", w)

    return model_fn


def _ref_pred(x, s: float, w: float) -> dict:
    sig = torch.full((x.shape[0],), s, dtype=F64)
    gc, gu = _cond_u(x, sig), _uncond_u(x, sig)
    gm_c = ref_u_to_x0(gc.means, gc.logweights, gc.logstds, x, sig)
    m_u = ref_u_to_x0(gu.means, gu.logweights, gu.logstds, x, sig).mean()
    return ref_guidance(gm_c, m_u, w)


def _draw_x0(means, logw, var, generator):
    """x0 ~ GM per sample (2D points): component by inverse CDF of one uniform, plus sqrt(var) N(0, I)."""
    u = torch.rand(means.shape[0], 1, generator=generator, dtype=F64)
    cdf = torch.cumsum(logw.to(F64).exp()[:, :, 0], dim=1)
    k = (u > cdf).sum(1).clamp(max=means.shape[1] - 1)
    noise = torch.randn(means.shape[0], means.shape[2], generator=generator, dtype=F64)
    return means.to(F64)[torch.arange(means.shape[0]), k] + var.to(F64).reshape(-1, 1).sqrt() * noise


def _ref_trajectory(x1, nfe, w, sde, substeps=1, generator=None, drop=()):
    """GM-SDE 2 (with _draw_x0 and one N(0, I) draw per step, in the solver's order) or GM-ODE 2 with sub-steps."""
    x = x1.to(F64)
    sig = [1 - i / nfe for i in range(nfe)] + [0.0]
    prev, damps, targets = None, [], []
    for i in range(nfe):
        s, s_next = sig[i], sig[i + 1]
        pred = _ref_pred(x, s, w)
        gm, target, diag = ref_second_order(pred, prev, x, s, s - s_next, drop)
        prev = diag["prev"]
        targets.append(target)
        if "damp" in diag:
            damps.append(diag["damp"])
        if sde:
            x0 = _draw_x0(gm.means, gm.logw, gm.var, generator)
            c1, c2, c3 = ref_transition(s, s_next)
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(F64)
            x = c1 * x + c2 * x0 + math.sqrt(max(c3, 0.0)) * noise
        else:
            x_src = x
            for j in range(substeps):
                s_j, s_j1 = s + (s_next - s) * j / substeps, s + (s_next - s) * (j + 1) / substeps
                x0 = gm.mean() if j == 0 else ref_recondition_mean(gm, x_src, s, x, s_j)
                x = x + (x - x0) / s_j * (s_j1 - s_j)
    return x, torch.cat(damps), targets


@pytest.mark.parametrize("substeps", [1, 4])
def test_guided_gm_ode_2_matches_reference_for_inexact_model(substeps):
    """Truth: the float64 reference trajectory of guided (w~ = 0.3) GM-ODE 2 at NFE 4 with an inexact model. The
    damping factor is active (inside (0.1, 0.97) somewhere), and both the guidance bias in B and the (w~ cb)^2 term
    of the damping move the reference by far more than the float32 tolerance."""
    w, nfe = 0.3, 4
    x1 = torch.randn(256, 2, generator=seeded(50))
    ref, damps, _ = _ref_trajectory(x1, nfe, w, sde=False, substeps=substeps)
    assert bool(((damps > 0.1) & (damps < 0.97)).any()), "the damping factor must be active somewhere"
    out = gm_ode_2(_lib_model(w), x1, sigma_grid(nfe), substeps=substeps).to(F64)
    torch.testing.assert_close(out, ref, rtol=0, atol=5e-4)
    for drop in ("bias", "cb"):
        ablated = _ref_trajectory(x1, nfe, w, sde=False, substeps=substeps, drop=(drop,))[0]
        assert float((ablated - ref).abs().max()) > 2e-2, f"dropping {drop} must move the trajectory"


def test_guided_gm_sde_2_matches_reference_for_inexact_model():
    """Truth: the float64 reference of guided (w~ = 0.3) GM-SDE 2 at NFE 4 with an inexact model and the same
    random numbers: the solver's x0 draw is replaced by _draw_x0 (the x0_sampler hook), and the transition noise is
    the solver's one N(0, I) draw per step. Sample by sample, and the target Gaussian handed to the x0 sampler
    (the input of a spectrum network) at every step."""
    w, nfe = 0.3, 4
    x1 = torch.randn(256, 2, generator=seeded(51))
    seen = []

    def x0_sampler(gm, target, generator):
        seen.append(target)
        return _draw_x0(gm.means, gm.logweights, gm.var, generator).to(torch.float32)

    out = gm_sde_2(_lib_model(w), x1, sigma_grid(nfe), generator=seeded(52), x0_sampler=x0_sampler).to(F64)
    ref, damps, targets = _ref_trajectory(x1, nfe, w, sde=True, generator=seeded(52))
    assert bool(((damps > 0.1) & (damps < 0.97)).any()), "the damping factor must be active somewhere"
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-3)
    assert len(seen) == nfe
    for got, (m_t, v_t) in zip(seen, targets, strict=True):
        torch.testing.assert_close(got.mean.to(F64), m_t, rtol=0, atol=1e-3)
        np.testing.assert_allclose(got.var.to(F64).reshape(-1).numpy(), v_t.numpy(), rtol=1e-3)
    for drop in ("bias", "cb"):
        ablated = _ref_trajectory(x1, nfe, w, sde=True, generator=seeded(52), drop=(drop,))[0]
        assert float((ablated - ref).abs().max()) > 2e-2, f"dropping {drop} must move the trajectory"
