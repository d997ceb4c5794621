"""GM sampling overhead per network evaluation: everything a GM solver does besides the network call.

The network (a DiT variant with the GM head, or the velocity head for the flow baselines) is run once on a fixed batch
and its output cached; the solver is then driven through the project's CountingModel over a stub that returns the
cached output instantly, so the measured time is exactly the solver's own work per NFE (guidance, u -> x0, 2nd-order
extrapolation, GM-ODE sub-steps, GM-SDE sampling, spectral KR transport). It is compared with the time of the real
network forward at the same batch (doubled batch when guided: the conditional and unconditional passes).

Writes one CSV row per (solver, guidance, spectral): overhead per NFE, forward time per NFE, and their ratio.

Example:
    python workflow/scripts/bench_gm_overhead.py --variant dit-fmnist-tiny --batch 500 --nfe 6 --threads 1 \\
        --out results/benchmarks/gm_overhead.csv
"""

from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import torch

from gmflow.harness import registry
from gmflow.harness.adapters import Counted, NetworkFn, model_fn
from gmflow.harness.argtypes import add_dit_shape_args, dit_shape_overrides
from gmflow.harness.dit import DIT_VARIANTS, build_dit
from gmflow.harness.io import save_csv
from gmflow.schedule import sigma_grid
from gmflow.spectral import SpectrumMLP, spectral_x0_sampler


class CachedNet(torch.nn.Module):
    """Returns one precomputed network output, whatever the input: a network with zero cost."""

    def __init__(self, output, null_label: int):
        super().__init__()
        self.output, self.null_label = output, null_label

    def forward(self, x_t, t, y=None):
        return self.output


def median_time(fn, repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls, after one untimed warm-up call (lazy imports, caches)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_forward(net, x, y, repeats: int) -> float:
    sigma = torch.full((len(x),), 0.7)
    with torch.no_grad():
        return median_time(lambda: net(x, 1000 * sigma, y), repeats)


def time_solver(stub, method: str, guidance: str, scale: float, y, x, solver: str, nfe: int, kwargs: dict,
                repeats: int) -> float:
    """Median seconds of one full solver run over the zero-cost ``stub``."""

    def run():
        model = model_fn(Counted(NetworkFn(stub)), method, solver, guidance, scale, 1.0, y, stub.null_label)
        registry.SOLVERS[solver](model, x.clone(), sigma_grid(nfe), generator=torch.Generator().manual_seed(0),
                                 **kwargs)
        if model.calls != nfe:
            raise RuntimeError(f"{solver} made {model.calls} network calls, expected {nfe}")

    return median_time(run, repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", choices=sorted(DIT_VARIANTS), default="dit-fmnist-tiny")
    p.add_argument("--num-components", "-K", type=int, default=8)
    p.add_argument("--batch", type=int, default=500, help="samples per batch (the sampling block size)")
    p.add_argument("--nfe", type=int, default=6)
    p.add_argument("--substeps", default="paper-imagenet", help="GM-ODE sub-step rule or integer")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", required=True)
    add_dit_shape_args(p)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    substeps = int(a.substeps) if a.substeps.isdigit() else a.substeps
    rows = []
    for head in ("gm", "velocity"):
        net = build_dit(a.variant, head, a.num_components, **dit_shape_overrides(a)).eval()
        shape = (a.batch, net.config.in_channels, *net.input_hw)
        x = torch.randn(shape)
        y = torch.arange(a.batch) % net.config.num_classes
        solvers = registry.GM_SOLVERS_KEYS if head == "gm" else ("euler", "dpm++-2m")
        for guided in (False, True):
            xb = torch.cat([x, x]) if guided else x
            yb = torch.cat([y, torch.full_like(y, net.null_label)]) if guided else y
            forward_s = time_forward(net, xb, yb, a.repeats)
            with torch.no_grad():
                out = net(xb, torch.full((len(xb),), 700.0), yb)
            if head == "gm":  # a trained-looking spread of components and a small shared std
                out.means.add_(torch.randn_like(out.means))
                out.logstds.fill_(-1.0)
            stub = CachedNet(out, net.null_label)
            guidance = ("probabilistic" if head == "gm" else "cfg") if guided else "none"
            scale = (0.3 if head == "gm" else 2.0) if guided else 0.0
            for solver in solvers:
                for spectral in ((False, True) if solver in registry.GM_SDE_SOLVERS else (False,)):
                    kwargs = {}
                    if solver in registry.GM_ODE_SOLVERS:
                        kwargs["substeps"] = registry.substeps_for_nfe(a.nfe, substeps)
                    if spectral:
                        kwargs["x0_sampler"] = spectral_x0_sampler(SpectrumMLP(shape[1], max(shape[2:])).eval())
                    method = "gmflow" if head == "gm" else "fm"
                    overhead_s = time_solver(stub, method, guidance, scale, y if guided else None, x, solver, a.nfe,
                                             kwargs, a.repeats) / a.nfe
                    rows.append({"variant": a.variant, "patch_size": net.config.patch_size, "head": head,
                                 "K": a.num_components if head == "gm" else 0,
                                 "solver": solver, "guidance": guidance, "spectral": int(spectral), "nfe": a.nfe,
                                 "substeps": kwargs.get("substeps", 1), "batch": a.batch, "threads": a.threads,
                                 "forward_s": round(forward_s, 5), "overhead_s_per_nfe": round(overhead_s, 5),
                                 "overhead_ratio": round(overhead_s / forward_s, 4)})
                    print(rows[-1])
    save_csv(pd.DataFrame(rows), a.out)


if __name__ == "__main__":
    main()
