"""Time a DiT variant with the flow-matching (velocity) head against the GM head: forward and full train step.

The train step is what the training loop does per iteration: build the training pair from pre-drawn noise (FM:
``fm_pair``; GMFlow: ``sample_transition_pair`` with lambda = 0.5), forward, per-sample loss (``fm_loss`` or
``transition_loss``) averaged over the batch, backward, Adam step. The forward time is one inference forward under
``torch.no_grad`` (what a sampler pays per NFE). The two heads are timed alternately within each repeat, after warm-up,
so that machine drift affects both alike; the median over repeats is reported.

Writes one CSV row per head: variant, head, K (0 for the velocity head), batch, threads, forward_s, step_s, params.

Example:
    python workflow/scripts/bench_dit.py --variant dit-fmnist-tiny --batch 128 --threads 1 --repeats 7 \\
        --out results/bench/dit-fmnist-tiny_b128_t1.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time

import torch

from baselines.fm import fm_loss, fm_pair
from gmflow.harness.argtypes import add_dit_shape_args, dit_shape_overrides
from gmflow.harness.dit import DIT_VARIANTS, build_dit, count_parameters
from gmflow.loss import sample_transition_pair, transition_loss
from gmflow.spectral import SpectrumMLP, spectral_training_loss


def make_batch(net, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Fixed random data, labels, noise levels and noise for one benchmark batch."""
    cfg = net.config
    shape = (batch, cfg.in_channels, *net.input_hw)
    return {
        "x0": torch.randn(shape, generator=generator),
        "eps0": torch.randn(shape, generator=generator),
        "eps1": torch.randn(shape, generator=generator),
        "sigma": torch.rand(batch, generator=generator).clamp(min=1e-3),
        "y": torch.randint(0, cfg.num_classes + 1, (batch,), generator=generator),
    }


def train_step(net, opt, b: dict[str, torch.Tensor], trans_ratio: float, spectrum=None) -> float:
    """One optimiser step of the head's own loss (plus the spectral loss when ``spectrum``); returns the loss."""
    opt.zero_grad(set_to_none=True)
    if net.head == "velocity":
        x_t, u = fm_pair(b["x0"], b["eps0"], b["sigma"])
        loss = fm_loss(net(x_t, 1000 * b["sigma"], b["y"]), u).mean()
    else:
        pair = sample_transition_pair(b["x0"], b["sigma"], trans_ratio, b["eps0"], b["eps1"])
        gm = net(pair.x_high, 1000 * pair.sigma_high, b["y"])
        loss = transition_loss(gm, pair).mean()
        if spectrum is not None:
            loss = loss + spectral_training_loss(spectrum, gm, b["x0"], pair.x_high, pair.sigma_high).mean()
    loss.backward()
    opt.step()
    return loss.item()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", choices=sorted(DIT_VARIANTS), default="dit-fmnist-tiny", help="DiT variant")
    p.add_argument("--batch", type=int, default=128, help="batch size (default: %(default)s)")
    p.add_argument("--num-components", "-K", type=int, default=8, help="K of the GM head (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)")
    p.add_argument(
        "--repeats", type=int, default=7, help="timed repeats per head; median reported (default: %(default)s)"
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed repeats first (default: %(default)s)")
    p.add_argument("--trans-ratio", type=float, default=0.5, help="lambda of the GM pair (default: %(default)s)")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute blocks in backward")
    p.add_argument("--spectral", action="store_true", help="GM step includes the SpectrumMLP's spectral loss")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and data (default: %(default)s)")
    p.add_argument(
        "--out", default=None, help="CSV path (default: results/bench/dit_{variant}_b{batch}_t{threads}.csv)"
    )
    add_dit_shape_args(p)
    a = p.parse_args()
    for name in ("batch", "num_components", "threads", "repeats"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.warmup < 0:
        p.error(f"--warmup must be >= 0, got {a.warmup}")
    torch.set_num_threads(a.threads)
    out = a.out or os.path.join("results", "bench", f"dit_{a.variant}_b{a.batch}_t{a.threads}.csv")

    nets, opts, spectrum = {}, {}, None
    for head in ("velocity", "gm"):
        torch.manual_seed(a.seed)
        nets[head] = build_dit(
            a.variant, head, a.num_components, grad_checkpointing=a.grad_checkpointing, **dit_shape_overrides(a)
        )
        params = list(nets[head].parameters())
        if head == "gm" and a.spectral:
            spectrum = SpectrumMLP(nets[head].config.in_channels, base_size=max(nets[head].input_hw))
            params += list(spectrum.parameters())
        opts[head] = torch.optim.Adam(params, lr=1e-4)
    batch = make_batch(nets["gm"], a.batch, torch.Generator().manual_seed(a.seed))
    times = {head: {"forward_s": [], "step_s": []} for head in nets}

    def forward(net):
        with torch.no_grad():
            net(batch["x0"], 1000 * batch["sigma"], batch["y"])

    for r in range(a.warmup + a.repeats):
        for head, net in nets.items():
            net.eval()
            t_fwd = timed(lambda net=net: forward(net))
            net.train()
            spec = spectrum if head == "gm" else None
            opt = opts[head]
            t_step = timed(lambda net=net, opt=opt, spec=spec: train_step(net, opt, batch, a.trans_ratio, spec))
            if r >= a.warmup:
                times[head]["forward_s"].append(t_fwd)
                times[head]["step_s"].append(t_step)

    rows = []
    for head, net in nets.items():
        rows.append(
            {
                "variant": a.variant,
                "patch_size": nets[head].config.patch_size,
                "head": head,
                "K": a.num_components if head == "gm" else 0,
                "batch": a.batch,
                "threads": a.threads,
                "forward_s": round(statistics.median(times[head]["forward_s"]), 5),
                "step_s": round(statistics.median(times[head]["step_s"]), 5),
                "params": count_parameters(net),
                "spectral": int(head == "gm" and a.spectral),
            }
        )
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        print(",".join(str(v) for v in row.values()))
    fm, gm = rows
    print(
        f"GM/FM ratio: forward {gm['forward_s'] / fm['forward_s']:.3f}, step {gm['step_s'] / fm['step_s']:.3f}; "
        f"params +{gm['params'] - fm['params']} ({100 * (gm['params'] / fm['params'] - 1):.2f}%); wrote {out}"
    )


if __name__ == "__main__":
    main()
