"""Standing mutation check: does the test suite notice a wrong formula?

Each entry of MUTATIONS changes ONE line of the method or metric code (a fragment that must occur exactly once in its
file, and its replacement) and names the test files that should catch it. For every mutation the script copies the
repository's files once into a temporary directory (``git ls-files``; the working tree is never modified), applies
the mutation there, runs ``python -m pytest -x -q -p no:cacheprovider <tests>`` in the copy and restores the line.
A mutation is "caught" when the tests fail, "MISSED" when they pass. A fragment that is not found (or found more than
once) is an "ERROR": the list is stale and must be updated together with the code.

Usage:
    python scripts/mutation_check.py                 # all mutations, then a summary table
    python scripts/mutation_check.py --list          # list the mutations
    python scripts/mutation_check.py --only c3-half  # one mutation (repeat --only for several)

Keep the list growing: every new formula gets at least one mutation here and a test that catches it. The exit code
is 0 whatever the outcome (the table is the result); it is non-zero only if the script itself fails, e.g. when the
unmutated tests already fail (then every mutation would look caught).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    find: str
    replace: str
    tests: tuple[str, ...]
    note: str = ""


GM = ("tests/test_gm.py",)
LOSS = ("tests/test_loss.py",)
GUIDE = ("tests/test_guidance.py", "tests/test_second_order.py")
SOLVE = ("tests/test_solvers.py", "tests/test_second_order.py")
O2 = ("tests/test_second_order.py", "tests/test_solvers.py")  # the targeted file first: -x stops early
SCHED = ("tests/test_schedule.py", "tests/test_loss.py", "tests/test_solvers.py")
KR_DHT = ("tests/test_spectral.py",)
M2D = ("tests/test_metrics2d.py", "tests/test_nonfinite.py")
MIMG = ("tests/test_images_data_metrics.py",)

MUTATIONS: list[Mutation] = [
    # ---------------------------------------------------------------- gmflow/gm.py
    Mutation("surrogate-var-sum-channels", "gmflow/gm.py",
             "spread = (w * (self.means - m.unsqueeze(1)).square()).sum(1).mean(1, keepdim=True)",
             "spread = (w * (self.means - m.unsqueeze(1)).square()).sum(1).sum(1, keepdim=True)", GM + GUIDE),
    Mutation("u-to-x0-sign", "gmflow/gm.py",
             "means = x_t.unsqueeze(1) - s.unsqueeze(1) * gm_u.means",
             "means = x_t.unsqueeze(1) + s.unsqueeze(1) * gm_u.means", GM),
    Mutation("gaussian-ratio-mean-sign", "gmflow/gm.py",
             "return IsoGaussian(a * g_num.mean - b * g_den.mean, g_num.var * a)",
             "return IsoGaussian(a * g_num.mean + b * g_den.mean, g_num.var * a)", GM),
    Mutation("gaussian-ratio-natural-eta-sign", "gmflow/gm.py",
             "return g_num.mean / g_num.var - g_den.mean / g_den.var, (1 / g_num.var - 1 / g_den.var).clamp(min=0)",
             "return g_num.mean / g_num.var + g_den.mean / g_den.var, (1 / g_num.var - 1 / g_den.var).clamp(min=0)",
             GUIDE),
    Mutation("gm-mul-natural-logit-half", "gmflow/gm.py",
             "quad = (gm.means * e).sum(2, keepdim=True) - 0.5 * p * gm.means.square().sum(2, keepdim=True)",
             "quad = (gm.means * e).sum(2, keepdim=True) - p * gm.means.square().sum(2, keepdim=True)",
             GUIDE + ("tests/test_robustness.py",)),
    Mutation("gm-mul-gaussian-logit-half", "gmflow/gm.py",
             "logits = gm.logweights - (gm.means - m_r).square().sum(2, keepdim=True) / (2 * den)",
             "logits = gm.logweights - (gm.means - m_r).square().sum(2, keepdim=True) / den", GM),
    Mutation("recondition-mean-logit-no-den", "gmflow/gm.py",
             "logits = gm_src.logweights + (dot - 0.5 * zeta.unsqueeze(1) * means_sq) * (inv_v / prec).unsqueeze(1)",
             "logits = gm_src.logweights + (dot - 0.5 * zeta.unsqueeze(1) * means_sq)", GM + SOLVE),
    Mutation("recondition-logstd-factor", "gmflow/gm.py",
             "logstds = -0.5 * torch.log(prec)",
             "logstds = -torch.log(prec)", GM + ("tests/test_robustness.py",)),
    Mutation("likelihood-ratio-nu-unsquared", "gmflow/gm.py",
             "nu = a_tgt * x_tgt / s_tgt.square() - a_src * x_src / s_src.square()",
             "nu = a_tgt * x_tgt / s_tgt.square() - a_src * x_src / s_src", GM),
    Mutation("gm-sample-var-for-std", "gmflow/gm.py",
             "return mu + torch.exp(self.logstds.squeeze(1)) * noise",
             "return mu + torch.exp(2 * self.logstds.squeeze(1)) * noise", GM),
    # ---------------------------------------------------------------- gmflow/loss.py
    Mutation("c3-half", "gmflow/loss.py",
             "torch.log(c3.clamp(min=EPS)).unsqueeze(1),",
             "torch.log((0.5 * c3).clamp(min=EPS)).unsqueeze(1),", LOSS, "passed every test before"),
    Mutation("c3-zero", "gmflow/loss.py",
             "torch.log(c3.clamp(min=EPS)).unsqueeze(1),",
             "torch.log((0 * c3).clamp(min=EPS)).unsqueeze(1),", LOSS, "passed every test before"),
    Mutation("c3-double", "gmflow/loss.py",
             "torch.log(c3.clamp(min=EPS)).unsqueeze(1),",
             "torch.log((2 * c3).clamp(min=EPS)).unsqueeze(1),", LOSS, "passed every test before"),
    Mutation("transition-var-no-sigma-h", "gmflow/loss.py",
             "2 * (gm_u.logstds + torch.log((s_h * c2).clamp(min=EPS)).unsqueeze(1)),",
             "2 * (gm_u.logstds + torch.log(c2.clamp(min=EPS)).unsqueeze(1)),", LOSS),
    Mutation("nll-no-channel-log-std", "gmflow/loss.py",
             "comp = gm.logweights - 0.5 * sq + c * torch.log(inv_std)",
             "comp = gm.logweights - 0.5 * sq + torch.log(inv_std)", LOSS),
    Mutation("sigma-low-lambda-not-one-minus", "gmflow/loss.py",
             "sigma_low = torch.minimum(sigma_high * (1 - trans_ratio), sigma_high - min_gap).clamp(min=0)",
             "sigma_low = torch.minimum(sigma_high * trans_ratio, sigma_high - min_gap).clamp(min=0)", LOSS),
    # ---------------------------------------------------------------- gmflow/guidance.py (probabilistic only)
    Mutation("projection-sign", "gmflow/guidance.py",
             "return delta - orthogonal * coef * axis",
             "return delta + orthogonal * coef * axis", GUIDE),
    Mutation("projection-axis-uncond", "gmflow/guidance.py",
             "delta = orthogonal_projection(m_c - mean_uncond, m_c, orthogonal)",
             "delta = orthogonal_projection(m_c - mean_uncond, mean_uncond, orthogonal)", GUIDE),
    Mutation("guidance-bias-scale-squared", "gmflow/guidance.py",
             "bias = delta * (scale * v_c.sqrt() * power.clamp(min=EPS).rsqrt())",
             "bias = delta * (scale * scale * v_c.sqrt() * power.clamp(min=EPS).rsqrt())", GUIDE),
    Mutation("guidance-target-var", "gmflow/guidance.py",
             "target = IsoGaussian(m_c + bias, v_c * (1 - scale * scale))",
             "target = IsoGaussian(m_c + bias, v_c * (1 - scale))", GUIDE),
    Mutation("pixel-average-of-std", "gmflow/guidance.py",
             "var = g.var.mean(dim=dims, keepdim=True) if dims else g.var",
             "var = g.var.sqrt().mean(dim=dims, keepdim=True).square() if dims else g.var", GUIDE),
    # ---------------------------------------------------------------- gmflow/solvers.py
    Mutation("o2-drop-guidance-bias", "gmflow/solvers.py",
             "bias = bias + pred.bias",
             "bias = bias", O2, "passed every test before"),
    Mutation("o2-drop-cb-damping", "gmflow/solvers.py",
             "err_power = avg_var * ((pred.scale * cb) ** 2 + ca)",
             "err_power = avg_var * ca", O2, "passed every test before"),
    Mutation("o2-k-half", "gmflow/solvers.py",
             "k = bcast(0.5 * h / cache.h, nd).to(x_t)",
             "k = bcast(0.5 * h / h, nd).to(x_t)", O2,
             "uniform grids have h = h_prev: only a non-uniform step shows it"),
    Mutation("o2-damp-no-sqrt", "gmflow/solvers.py",
             "damp = (1 - err_power / prev_h.square()).clamp(min=0).sqrt()",
             "damp = (1 - err_power / prev_h.square()).clamp(min=0)", O2),
    Mutation("o2-cache-extrapolated-gm", "gmflow/solvers.py",
             "cache.gm, cache.x, cache.sigma, cache.h = pred.gm, x_t, sigma, h",
             "cache.gm, cache.x, cache.sigma, cache.h = out_gm, x_t, sigma, h", O2),
    Mutation("o2-target-var-no-power", "gmflow/solvers.py",
             "base_g.var * (1 - power / avg_var.clamp(min=EPS)).clamp(min=EPS))",
             "base_g.var)", O2),
    Mutation("sde-c3-not-sqrt", "gmflow/solvers.py",
             "x = c1 * x + c2 * x0 + c3.clamp(min=0).sqrt() * noise",
             "x = c1 * x + c2 * x0 + c3.clamp(min=0) * noise", SOLVE),
    Mutation("ode-substep-outer-sigma", "gmflow/solvers.py",
             "x = x + (x - x0) / s_j.clamp(min=EPS) * (s_j1 - s_j)",
             "x = x + (x - x0) / s.clamp(min=EPS) * (s_j1 - s_j)", SOLVE),
    Mutation("ode-recondition-from-current-x", "gmflow/solvers.py",
             "x0 = gm.mean() if j == 0 else gm_recondition_mean(gm, x_src, s, x, s_j, means_sq)",
             "x0 = gm.mean() if j == 0 else gm_recondition_mean(gm, x, s, x, s_j, means_sq)", SOLVE),
    # ---------------------------------------------------------------- gmflow/schedule.py
    Mutation("c3-sigma-unsquared", "gmflow/schedule.py",
             "return ratio_s.square() * ratio_a, b * alpha_to, b * sigma_to.square()",
             "return ratio_s.square() * ratio_a, b * alpha_to, b * sigma_to", SCHED),
    Mutation("forward-transition-std", "gmflow/schedule.py",
             "std = (s_h.square() - (ratio * s_l).square()).clamp(min=0).sqrt()",
             "std = (s_h.square() - s_l.square()).clamp(min=0).sqrt()", SCHED),
    Mutation("time-shift-formula", "gmflow/schedule.py",
             "return shift * sigma / (1 + (shift - 1) * sigma)",
             "return shift * sigma / (1 + (shift + 1) * sigma)",
             SCHED),
    Mutation("subdivide-fraction", "gmflow/schedule.py",
             "frac = torch.arange(substeps, dtype=sigmas.dtype, device=sigmas.device) / substeps",
             "frac = torch.arange(substeps, dtype=sigmas.dtype, device=sigmas.device) / (substeps + 1)", SCHED),
    Mutation("logit-normal-scale", "gmflow/harness/losses.py",
             "s = torch.sigmoid(torch.randn(n, generator=generator))",
             "s = torch.sigmoid(2 * torch.randn(n, generator=generator))", ("tests/test_schedule.py",)),
    # ---------------------------------------------------------------- gmflow/spectral.py
    Mutation("dht-minus-imag", "gmflow/spectral.py",
             "return f.real + f.imag",
             "return f.real - f.imag", KR_DHT),
    Mutation("spectrum-no-log-hw", "gmflow/spectral.py",
             "log_power = F.log_softmax(spectrum.reshape(b, c, h * w), dim=-1) + math.log(h * w)  # (B, C, HW)",
             "log_power = F.log_softmax(spectrum.reshape(b, c, h * w), dim=-1)  # (B, C, HW)", KR_DHT),
    Mutation("kr-ascending-eigenvectors", "gmflow/kr.py",
             "rot = eigvecs.flip(-1)  # descending eigenvalues",
             "rot = eigvecs  # descending eigenvalues", KR_DHT),
    Mutation("newton-step-no-half", "gmflow/kr.py",
             "step = (cdf - target) / (2 * pdf.clamp(min=pdf_floor))",
             "step = (cdf - target) / pdf.clamp(min=pdf_floor)", KR_DHT),
    Mutation("spectral-loss-no-channels", "gmflow/spectral.py",
             "return (0.5 * p.shape[1] * weight) * per_entry.mean(dim=(1, 2, 3))",
             "return (0.5 * weight) * per_entry.mean(dim=(1, 2, 3))", KR_DHT),
    Mutation("surrogate-stats-biased-var", "gmflow/spectral.py",
             "mean_stat = mean.var(dim=(-2, -1)).mean(1)  # (B,)",
             "mean_stat = mean.var(dim=(-2, -1), correction=0).mean(1)  # (B,)", KR_DHT),
    Mutation("spectral-noise-power-not-halved", "gmflow/spectral.py",
             "return dht2(eps * torch.exp(0.5 * p))",
             "return dht2(eps * torch.exp(p))", KR_DHT),
    # ---------------------------------------------------------------- 2D metrics
    Mutation("pr2d-default-k5", "gmflow/harness/metrics2d.py",
             "def knn_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3)",
             "def knn_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 5)", M2D,
             "passed every test before"),
    Mutation("pr2d-evaluate-k5", "gmflow/harness/metrics2d.py",
             "knn_precision_recall(reference[ri], x[xi], k=3)",
             "knn_precision_recall(reference[ri], x[xi], k=5)", M2D, "passed every test before"),
    Mutation("knn-radius-k-minus-1", "gmflow/harness/metrics2d.py",
             "return d[:, -1]",
             "return d[:, -2]", M2D),
    Mutation("coverage-radius-unsquared", "gmflow/harness/metrics2d.py",
             "inside[i : i + chunk] = (d2 <= ref_radii[None] ** 2 + 1e-12).any(1)",
             "inside[i : i + chunk] = (d2 <= ref_radii[None] + 1e-12).any(1)", M2D),
    Mutation("tv-no-half", "gmflow/harness/metrics2d.py",
             "return 0.5 * (np.abs(p_hat - true_mass).sum() + (1 - p_hat.sum()) + (1 - true_mass.sum()))",
             "return (np.abs(p_hat - true_mass).sum() + (1 - p_hat.sum()) + (1 - true_mass.sum()))", M2D),
    Mutation("sliced-w2-abs", "gmflow/harness/metrics2d.py",
             "return float(np.sqrt(((px - py) ** 2).mean()))",
             "return float(np.sqrt(np.abs(px - py).mean()))", M2D),
    Mutation("non-finite-to-origin", "gmflow/harness/metrics2d.py",
             "x = np.where(finite[:, None], x, 1e6)",
             "x = np.where(finite[:, None], x, 0.0)", M2D),
    Mutation("finite-fraction-count", "gmflow/harness/metrics2d.py",
             'out = {"finite_fraction": float(finite.mean())}',
             'out = {"finite_fraction": float(finite.all())}', M2D),
    # ---------------------------------------------------------------- image metrics
    Mutation("fid-biased-covariance", "gmflow/harness/metrics_images.py",
             "return f.mean(0), np.cov(f, rowvar=False)",
             "return f.mean(0), np.cov(f, rowvar=False, bias=True)", MIMG),
    Mutation("fid-trace-factor", "gmflow/harness/metrics_images.py",
             "return float(diff @ diff + np.trace(sigma_1) + np.trace(sigma_2) - 2 * tr_covmean)",
             "return float(diff @ diff + np.trace(sigma_1) + np.trace(sigma_2) - tr_covmean)", MIMG),
    Mutation("kid-quadratic-kernel", "gmflow/harness/metrics_images.py",
             "return (x @ y.T / x.shape[1] + 1.0) ** 3",
             "return (x @ y.T / x.shape[1] + 1.0) ** 2", MIMG),
    Mutation("mmd-biased-denominator", "gmflow/harness/metrics_images.py",
             "return float((off_xx + off_yy) / (m * (m - 1)) - 2 * k_xy.sum() / m**2)",
             "return float((off_xx + off_yy) / (m * m) - 2 * k_xy.sum() / m**2)", MIMG),
    Mutation("pr-images-default-k5", "gmflow/harness/metrics_images.py",
             "def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3)",
             "def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 5)",
             ("tests/test_metrics2d.py", *MIMG)),
    # ---------------------------------------------------------------- training loop
    Mutation("nan-check-misses-inf", "gmflow/harness/train.py",
             "if not math.isfinite(loss_value):",
             "if math.isnan(loss_value):", ("tests/test_nonfinite.py",)),
    # ---------------------------------------------------------------- baselines and recipe (fair-baseline fixes)
    Mutation("cfg-uncond-plus-w-projected", "baselines/samplers.py",
             "return v_cond + (scale - 1) * delta",
             "return v_uncond + scale * delta", ("tests/test_samplers.py",), "the form used before the fix"),
    Mutation("cfg-axis-unconditional", "baselines/samplers.py",
             "delta = orthogonal_projection(v_cond - v_uncond, v_cond, orthogonal)",
             "delta = orthogonal_projection(v_cond - v_uncond, v_uncond, orthogonal)", ("tests/test_samplers.py",)),
    Mutation("ddpm-large-last-step-deterministic", "baselines/samplers.py",
             "return b.clamp(min=0).sqrt() * sigma",
             "return (sigma_to > 0) * b.clamp(min=0).sqrt() * sigma", ("tests/test_samplers.py",),
             "the behaviour before the fix"),
    Mutation("gm-cfg-axis-unconditional", "gmflow/guidance.py",
             "shift = (scale - 1) * orthogonal_projection(m_c - mean_uncond, m_c, orthogonal)",
             "shift = (scale - 1) * orthogonal_projection(m_c - mean_uncond, mean_uncond, orthogonal)",
             ("tests/test_guidance_cfg.py", "tests/test_guidance.py")),
    Mutation("gm-ode-default-euler", "gmflow/solvers.py",
             "substeps = paper_substeps(len(sigmas) - 1)",
             "substeps = 1", ("tests/test_train_recipe.py",), "the library default before the fix"),
    Mutation("weight-decay-on-biases", "gmflow/harness/train.py",
             'exempt if name.endswith("bias") or id(p) in no_decay else decay',
             "exempt if id(p) in no_decay else decay", ("tests/test_train_recipe.py",)),
    Mutation("rampup-ema-per-image", "gmflow/harness/train.py",
             "return 0.5 ** (batch_size / max(ema_nimg, 1e-8))",
             "return 0.5 ** (1 / max(ema_nimg, 1e-8))", ("tests/test_train_recipe.py",)),
]


def tracked_files(include_untracked: bool) -> list[str]:
    args = ["git", "-C", str(ROOT), "ls-files", "-z", "--cached"]
    if include_untracked:
        args += ["--others", "--exclude-standard"]
    out = subprocess.run(args, check=True, capture_output=True).stdout.decode()
    return sorted({f for f in out.split("\0") if f and (ROOT / f).is_file()})


def copy_repo(dest: Path, include_untracked: bool, rev: str | None = None) -> None:
    """The working tree's tracked files (or the files of commit ``rev``, via ``git archive``) into ``dest``."""
    if rev is not None:
        dest.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return
    for f in tracked_files(include_untracked):
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, target)


def run_pytest(workdir: Path, tests: list[str], timeout: float, deselect: tuple[str, ...] = (),
               stop_first: bool = True) -> tuple[str, float, str, list[str]]:
    """Run the tests in ``workdir``. Returns (outcome, seconds, last output line, failed node ids), the outcome one
    of pass / fail / timeout / nocollect."""
    env = {**os.environ, "PYTHONPATH": str(workdir), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *tests]
    if stop_first:
        cmd.insert(3, "-x")
    for node in deselect:
        cmd += ["--deselect", node]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - t0, f"no result after {timeout:.0f} s", []
    lines = [ln for ln in (proc.stdout + proc.stderr).strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    failed = [ln.split(" ", 1)[1].split(" - ")[0].strip() for ln in lines if ln.startswith(("FAILED ", "ERROR "))]
    # pytest exit codes: 0 all passed, 1 some failed, 2 interrupted (e.g. import error), 5 none collected
    outcome = {0: "pass", 5: "nocollect"}.get(proc.returncode, "fail")
    return outcome, time.perf_counter() - t0, last, failed


def check_import_location(workdir: Path) -> None:
    """The copy's packages, not the working tree's (an editable install), must be the ones imported."""
    env = {**os.environ, "PYTHONPATH": str(workdir), "PYTHONDONTWRITEBYTECODE": "1"}
    code = "import gmflow, baselines; print(gmflow.__file__); print(baselines.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, check=True, capture_output=True,
                         text=True).stdout.split()
    for path in out:
        if not Path(path).resolve().is_relative_to(workdir.resolve()):
            raise RuntimeError(f"the temporary copy imports {path}, not its own package: mutations would not apply")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="example: python scripts/mutation_check.py --only c3-half --only c3-zero")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--only", action="append", default=[], metavar="NAME", help="run only this mutation (repeatable)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per pytest run (default: %(default)s)")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip running the selected tests on the unmutated copy first")
    ap.add_argument("--include-untracked", action="store_true",
                    help="also copy untracked, not ignored files (e.g. a new test file not yet committed)")
    ap.add_argument("--rev", metavar="COMMIT",
                    help="check the files of this commit instead of the working tree (e.g. to see what an older "
                         "test suite missed); test files that do not exist there are skipped")
    a = ap.parse_args(argv)

    names = [m.name for m in MUTATIONS]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise SystemExit(f"duplicate mutation names: {sorted(dup)}")
    if a.list:
        width = max(map(len, names))
        for m in MUTATIONS:
            print(f"{m.name:<{width}}  {m.file}: {m.find!r} -> {m.replace!r}  [{', '.join(m.tests)}]")
        return 0
    unknown = set(a.only) - set(names)
    if unknown:
        raise SystemExit(f"unknown mutation(s) {sorted(unknown)}; see --list")
    selected = [m for m in MUTATIONS if not a.only or m.name in a.only]

    results = []
    with tempfile.TemporaryDirectory(prefix="mutation_check_") as tmp:
        work = Path(tmp) / "repo"
        copy_repo(work, a.include_untracked, a.rev)
        check_import_location(work)
        deselect: tuple[str, ...] = ()
        if not a.no_baseline:
            tests = sorted({t for m in selected for t in m.tests if (work / t.split("::")[0]).exists()})
            print(f"baseline: {len(tests)} test files on the unmutated copy ...", flush=True)
            outcome, secs, last, failed = run_pytest(work, tests, a.timeout, stop_first=False)
            print(f"baseline: {outcome} in {secs:.0f} s ({last})", flush=True)
            if outcome == "fail" and failed and all("::" in f for f in failed):
                deselect = tuple(failed)
                print(f"WARNING: {len(failed)} test(s) fail without any mutation and are deselected below:",
                      *failed, sep="\n  ", file=sys.stderr, flush=True)
            elif outcome != "pass":
                print("the unmutated tests do not run cleanly: a mutation check would be meaningless", file=sys.stderr)
                return 1
        for i, m in enumerate(selected, 1):
            path = work / m.file
            original = path.read_text() if path.exists() else None
            count = original.count(m.find) if original is not None else 0
            tests = [t for t in m.tests if (work / t.split("::")[0]).exists()]
            if count != 1:
                status, secs, detail = "ERROR", 0.0, (f"fragment found {count} times in {m.file}" if original
                                                      is not None else f"{m.file} does not exist")
            elif not tests:
                status, secs, detail = "ERROR", 0.0, f"none of the test files exist: {m.tests}"
            else:
                path.write_text(original.replace(m.find, m.replace))
                try:
                    outcome, secs, detail, _ = run_pytest(work, tests, a.timeout, deselect)
                finally:
                    path.write_text(original)
                status = {"fail": "caught", "timeout": "caught", "pass": "MISSED", "nocollect": "ERROR"}[outcome]
                if outcome == "timeout":
                    detail = "timeout: " + detail
            results.append((m, status, secs, detail))
            print(f"[{i}/{len(selected)}] {m.name}: {status} ({secs:.0f} s) {detail}", flush=True)

    width = max(len(m.name) for m, *_ in results) if results else 10
    print("\n" + "=" * 100)
    print(f"{'mutation':<{width}}  {'status':<7}  {'secs':>5}  file / note")
    print("-" * 100)
    for m, status, secs, detail in results:
        extra = f"  ({m.note})" if m.note else ""
        print(f"{m.name:<{width}}  {status:<7}  {secs:5.0f}  {m.file}{extra}")
        if status != "caught":
            print(f"{'':<{width}}  {'':<7}  {'':>5}  -> {detail}")
    caught = sum(s == "caught" for _, s, _, _ in results)
    errors = sum(s == "ERROR" for _, s, _, _ in results)
    valid = len(results) - errors
    frac = caught / valid if valid else float("nan")
    print("-" * 100)
    print(f"caught {caught} / {valid} mutations ({100 * frac:.0f}%); missed {valid - caught}; "
          f"errors (stale fragments) {errors}")
    if deselect:
        print(f"({len(deselect)} test(s) failing without mutation were deselected: {', '.join(deselect)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
