"""GMFlow: Gaussian Mixture Flow Matching (Chen et al., ICML 2025), pure PyTorch.

The method lives in small modules: :mod:`gmflow.gm` (GM algebra), :mod:`gmflow.schedule` (time convention),
:mod:`gmflow.loss` (transition loss), :mod:`gmflow.guidance` (probabilistic guidance), :mod:`gmflow.solvers`
(GM-SDE / GM-ODE, 1st and 2nd order). :mod:`gmflow.harness` holds data, networks, training and evaluation.
"""

from gmflow.gm import GaussianMixture, IsoGaussian, u_to_x0
from gmflow.guidance import GMPrediction, guided_gm_prediction, probabilistic_guidance
from gmflow.loss import sample_transition_pair, transition_loss
from gmflow.schedule import sigma_grid
from gmflow.solvers import GM_SOLVERS, gm_ode, gm_ode_2, gm_sde, gm_sde_2

__all__ = [
    "GM_SOLVERS",
    "GMPrediction",
    "GaussianMixture",
    "IsoGaussian",
    "gm_ode",
    "gm_ode_2",
    "gm_sde",
    "gm_sde_2",
    "guided_gm_prediction",
    "probabilistic_guidance",
    "sample_transition_pair",
    "sigma_grid",
    "transition_loss",
    "u_to_x0",
]
