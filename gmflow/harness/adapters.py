"""Small composable adapters from a network to the ``model_fn(x_t, sigma)`` that every solver takes.

- :class:`NetworkFn`: the network over the project's timestep (``t = 1000 sigma``), conditioned on bound labels;
- :class:`GMGuidance`: one batched conditional + unconditional pass of a GM network, guided (probabilistic or CFG);
- :class:`VelocityCFG`: the same for a velocity network, with classifier-free guidance;
- :class:`GMAsVelocity`: a GM prediction driven by a flow solver through its mean (ablation A4);
- :class:`Counted`: counts the calls a solver makes (the NFE of the tables) or a network's forward passes.

:func:`model_fn` composes them for a method, a solver family and a guidance mode.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from baselines.samplers import cfg_velocity
from gmflow.gm import GaussianMixture, bcast
from gmflow.guidance import GMPrediction, guided_gm_prediction
from gmflow.harness import registry
from gmflow.schedule import sigma_to_timestep


class Counted:
    """``fn`` that counts its calls in ``calls``."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


class NetworkFn:
    """``f(x_t, sigma, y)`` = ``net(x_t, 1000 sigma[, y])`` with the output in float32 (a GM or a velocity)."""

    def __init__(self, net: nn.Module):
        self.net = net

    def __call__(self, x_t: Tensor, sigma: Tensor, y: Tensor | None = None):
        out = self.net(x_t, sigma_to_timestep(sigma)) if y is None else self.net(x_t, sigma_to_timestep(sigma), y)
        return out.to(torch.float32) if isinstance(out, GaussianMixture) else out.float()


class Conditioned:
    """``model_fn(x_t, sigma)`` of a network function with the batch's labels bound (None: unconditional)."""

    def __init__(self, fn, y: Tensor | None = None):
        self.fn, self.y = fn, y

    def __call__(self, x_t: Tensor, sigma: Tensor):
        return self.fn(x_t, sigma, None if self.y is None else self.y[: x_t.shape[0]])


class _Paired:
    """One batched forward of the conditional and the unconditional (null-label) pass."""

    def __init__(self, fn, y: Tensor, null_label: int):
        self.fn, self.y, self.null_label = fn, y, null_label

    def pair(self, x_t: Tensor, sigma: Tensor):
        y = self.y[: x_t.shape[0]]
        null = torch.full_like(y, self.null_label)
        out = self.fn(torch.cat([x_t, x_t]), torch.cat([sigma, sigma]), torch.cat([y, null]))
        b = x_t.shape[0]
        if isinstance(out, GaussianMixture):
            return (GaussianMixture(out.means[:b], out.logweights[:b], out.logstds[:b]),
                    GaussianMixture(out.means[b:], out.logweights[b:], out.logstds[b:]))
        return out[:b], out[b:]


class GMGuidance(_Paired):
    """Guided x0-space prediction of a GM network: ``mode`` is ``probabilistic`` (scale ``w~``) or ``cfg`` (``w``)."""

    def __init__(self, fn, y: Tensor, null_label: int, mode: str, scale: float, orthogonal: float):
        super().__init__(fn, y, null_label)
        self.mode, self.scale, self.orthogonal = mode, scale, orthogonal

    def __call__(self, x_t: Tensor, sigma: Tensor) -> GMPrediction:
        cond, uncond = self.pair(x_t, sigma)
        return guided_gm_prediction(cond, uncond, x_t, sigma, self.mode, self.scale, self.orthogonal)


class VelocityCFG(_Paired):
    """Classifier-free guidance of a velocity network (:func:`baselines.samplers.cfg_velocity`)."""

    def __init__(self, fn, y: Tensor, null_label: int, scale: float, orthogonal: float):
        super().__init__(fn, y, null_label)
        self.scale, self.orthogonal = scale, orthogonal

    def __call__(self, x_t: Tensor, sigma: Tensor) -> Tensor:
        v_c, v_u = self.pair(x_t, sigma)
        return cfg_velocity(v_c, v_u, self.scale, self.orthogonal)


class GMAsVelocity:
    """A flow solver on a GM model: the velocity of the (guided) x0-space mean, ``u = (x_t - E[x0]) / sigma``."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, x_t: Tensor, sigma: Tensor) -> Tensor:
        out = self.fn(x_t, sigma)
        if isinstance(out, GaussianMixture):  # unguided: the velocity GM's own mean
            return out.mean()
        return (x_t.float() - out.gm.mean()) / bcast(sigma, x_t.dim()).float().clamp(min=1e-6)


def model_fn(network: Counted, method: str, solver: str, guidance: str = "none", scale: float = 0.0,
             orthogonal: float = 1.0, y: Tensor | None = None, null_label: int | None = None):
    """The ``model_fn(x_t, sigma)`` a ``solver`` takes from a counted :class:`NetworkFn` of a ``method`` model.

    The result is wrapped in :class:`Counted`: its ``calls`` are the NFE, ``network.calls`` the forward passes.
    """
    if guidance not in registry.GUIDANCE:
        raise ValueError(f"unknown guidance {guidance!r}; choose one of {registry.GUIDANCE}")
    if guidance != "none" and (y is None or null_label is None):
        raise ValueError("guidance needs class labels y and the null label of an unconditional pass")
    if method == "fm" and guidance == "probabilistic":
        raise ValueError("probabilistic guidance needs a GM model (method 'gmflow'); use 'cfg' for 'fm'")
    registry.check_solver(method, solver)
    if guidance == "none":
        fn = Conditioned(network, y)
    elif method == "gmflow":
        fn = GMGuidance(network, y, null_label, guidance, scale, orthogonal)
    else:
        fn = VelocityCFG(network, y, null_label, scale, orthogonal)
    if method == "gmflow" and not registry.is_gm_solver(solver):
        fn = GMAsVelocity(fn)
    return Counted(fn)
