# Local Flow Matching (docs/method.md, Sec. 7), a baseline of the 2D experiment. Every block is its own job: it trains
# on its pool (warm-started from the block before) and its pool is pushed through it by dopri5. The cached outputs make
# a chain resume at the block where it stopped, and one block can be rerun alone (with what depends on it):
#   {RES}/2d/{dataset}/{chain}/pool_0.npz             exact training sample
#   {RES}/2d/{dataset}/{chain}/block_{n}/             block n trained on pool_{n-1}: ema.safetensors, run.json
#                                                     (state.safetensors)
#   {RES}/2d/{dataset}/{chain}/pool_{n}.npz (+ .json) pool_{n-1} pushed through block n (counted NFE, seconds)
#   {RES}/2d/{dataset}/{chain}/student_{n}/           one-step student of block n (teacher pairs pool_n -> pool_{n-1})
#   {RES}/2d/{dataset}/{chain}/samples|metrics/{solver}_{setting}_seed{seed}.npz|.csv, setting nfe{per block}, tol{tol}
#   {RES}/2d/{dataset}/{chain}/metrics/nll_seed{seed}.csv   exact NLL of held-out points and its gap to the data
#                                                     entropy (dopri5 by default; repeated at 10x the tolerance)
#   {RES}/2d/{dataset}/lfm/metrics/nll-flow_{run}_seed{seed}.csv   the same for the 2D sweep's flow-matching runs
# {chain} is the main chain 'lfm' (lfm.train; tables/lfm_2d.csv and the LFM report) or a chain of lfm.chains
# ('lfm-{name}', lfm.train with the chain's overrides), so the main chain's paths are those of a config without chains.
# Needs common.smk (RES, CLI, ENV, opt, stage_threads, stage_resources) and data.smk; included after them.
import re

from gmflow.experiments.lfm.chain import SAMPLE_SOLVERS as LFM_SOLVERS
from gmflow.experiments.lfm.config import MAIN_CHAIN_2D, POOL_STREAM, chain_train, chains_2d, sample_settings

LFM = config.get("lfm")
# the configured 2D chains, exactly (the image chains of lfm_images.smk share the wildcard name, not the values)
LFM_CHAINS = "|".join(re.escape(c) for c in (chains_2d(LFM) if LFM else [MAIN_CHAIN_2D]))


def lfm_blocks():
    return range(1, LFM["num_blocks"] + 1)


def lfm_dir(dataset, chain):
    return f"{RES}/2d/{dataset}/{chain}"


def lfm_chain(dataset, solver, chain=MAIN_CHAIN_2D):
    """The folders of blocks 1..N (students for the distilled chain), block 1 first."""
    kind = "student" if solver == "distilled" else "block"
    return [f"{lfm_dir(dataset, chain)}/{kind}_{n}" for n in lfm_blocks()]


def lfm_chain_weights(w):
    name = "student.safetensors" if w.lfm_solver == "distilled" else "ema.safetensors"
    return [f"{d}/{name}" for d in lfm_chain(w.dataset, w.lfm_solver, w.chain)]


def lfm_solver_options(w):
    if w.lfm_solver in ("euler", "heun"):
        return opt("--nfe-per-block", w.setting.removeprefix("nfe"))
    if w.lfm_solver == "dopri5":
        tol = w.setting.removeprefix("tol")
        return f"{opt('--rtol', tol)} {opt('--atol', tol)}"
    return ""


def lfm_metric_files(chain=MAIN_CHAIN_2D, flow_runs=True):
    """Every sample-set metric file and NLL file of a chain, and (flow_runs) the NLL of the 2D flow-matching runs."""
    files = []
    for d in LFM["datasets"]:
        m = f"{lfm_dir(d, chain)}/metrics"
        for seed in LFM["sample"]["seeds"]:
            files += [f"{m}/{s}_{setting}_seed{seed}.csv" for s, setting in sample_settings(LFM)]
            if LFM["nll"]["num_points"] > 0:
                files.append(f"{m}/nll_seed{seed}.csv")
                if flow_runs:
                    files += [f"{RES}/2d/{d}/lfm/metrics/nll-flow_{run}_seed{seed}.csv" for run in lfm_flow_runs(d)]
    return files


def lfm_extra_chain_files():
    """The metric and NLL files of the chains of lfm.chains (not in tables/lfm_2d.csv)."""
    return [f for chain in chains_2d(LFM)[1:] for f in lfm_metric_files(chain, flow_runs=False)]


def lfm_flow_runs(dataset):
    """The flow-matching runs of the 2D sweep on this dataset: their NLL is computed the same way, for comparison."""
    runs = TOY["experiments"].get(dataset, {})
    return [r for r in runs if TOY["runs"][r]["method"] == "fm"]


def lfm_report_inputs():
    """Every file the LFM notebook reads besides the tables: block records, push records, student records."""
    N = LFM["num_blocks"]
    pushed = range(1, N + 1) if LFM["distill"]["steps"] > 0 else range(1, N)
    files = []
    for d in LFM["datasets"]:
        files += [f"{RES}/2d/{d}/lfm/block_{n}/run.json" for n in lfm_blocks()]
        files += [f"{RES}/2d/{d}/lfm/pool_{n}.json" for n in pushed]
        if LFM["distill"]["steps"] > 0:
            files += [f"{RES}/2d/{d}/lfm/student_{n}/run.json" for n in lfm_blocks()]
    return files


def lfm_final_targets():
    """The LFM part of `rule all`: the rendered report (it needs every output of the main chain) and the metric files
    of the other chains. Empty without an lfm section."""
    return [f"{RES}/reports/lfm_2d.html", *lfm_extra_chain_files()] if LFM is not None else []


def lfm_chain_dirs_2d(dataset):
    """Folders of the 2D chains on a dataset ('lfm' first); empty without an lfm section or off its datasets."""
    if LFM is None or dataset not in LFM["datasets"]:
        return []
    return [lfm_dir(dataset, c) for c in chains_2d(LFM)]


rule lfm_pool:
    # pool_0: the finite training sample of the chain (data stream POOL_STREAM + seed, disjoint from the references)
    output:
        f"{RES}/2d/{{dataset}}/{{chain}}/pool_0.npz",
    wildcard_constraints:
        chain=LFM_CHAINS,
    log:
        f"{RES}/logs/{{chain}}/pool_{{dataset}}.log",
    params:
        n=lambda w: LFM["pool_size"],
        stream=lambda w: POOL_STREAM + chain_train(LFM, w.chain)["seed"],
    priority: 20  # a long sequential chain or the inputs of many jobs: start it first
    threads: stage_threads("data")
    resources:
        **stage_resources("data"),
    conda:
        ENV
    benchmark:
        f"{RES}/benchmarks/{{chain}}_pool/{{dataset}}.tsv"
    shell:
        "{CLI} 2d prepare-data --dataset {wildcards.dataset:q} --num-samples {params.n:q} --seed {params.stream:q}"
        " --out {output:q} > {log:q} 2>&1"


rule lfm_train_block:
    # resumable from block_{n}/state.safetensors (kept across job restarts; dropped when the pool, the warm start or a
    # setting other than the step count changed)
    input:
        pool=lambda w: f"{lfm_dir(w.dataset, w.chain)}/pool_{int(w.n) - 1}.npz",
        init=lambda w: [f"{lfm_dir(w.dataset, w.chain)}/block_{int(w.n) - 1}/ema.safetensors"] if int(w.n) > 1 else [],
    output:
        weights=f"{RES}/2d/{{dataset}}/{{chain}}/block_{{n}}/ema.safetensors",
        spec=f"{RES}/2d/{{dataset}}/{{chain}}/block_{{n}}/run.json",
    wildcard_constraints:
        n=r"[1-9]\d*",
        chain=LFM_CHAINS,
    log:
        f"{RES}/logs/{{chain}}/train_{{dataset}}_block{{n}}.log",
    benchmark:
        f"{RES}/benchmarks/{{chain}}/train_{{dataset}}_block{{n}}.tsv"
    params:
        L=lambda w: {k: LFM[k] for k in ("num_blocks", "step_c", "step_rho", "interpolant")},  # not lfm.chains
        t=lambda w: chain_train(LFM, w.chain),
        init=lambda w, input: opt("--init-from", input.init[0] if input.init else None),
        out=lambda w: f"{lfm_dir(w.dataset, w.chain)}/block_{w.n}",
    priority: 20  # a long sequential chain or the inputs of many jobs: start it first
    threads: stage_threads("train")
    resources:
        **stage_resources("train", one_process=True),
    conda:
        ENV
    shell:
        "{CLI} lfm train-block --dataset {wildcards.dataset:q} --block {wildcards.n}"
        " --num-blocks {params.L[num_blocks]:q} --step-c {params.L[step_c]:q} --step-rho {params.L[step_rho]:q}"
        " --interpolant {params.L[interpolant]:q} --pool {input.pool:q} {params.init} --width {params.t[width]:q}"
        " --depth {params.t[depth]:q} --min-period {params.t[min_period]:q} --steps {params.t[steps_per_block]:q}"
        " --batch-size {params.t[batch_size]:q} --lr {params.t[lr]:q} --warmup-steps {params.t[warmup_steps]:q}"
        " --ema-gamma {params.t[ema_gamma]:q} --checkpoint-every {params.t[checkpoint_every]:q}"
        " --seed {params.t[seed]:q} --threads {threads} --quiet --out {params.out:q} > {log:q} 2>&1"


rule lfm_push:
    # pool_n = block n's pool pushed through it (t: 0 -> 1); pool_N (through the free block) feeds distillation only
    input:
        weights=f"{RES}/2d/{{dataset}}/{{chain}}/block_{{n}}/ema.safetensors",
        pool=lambda w: f"{lfm_dir(w.dataset, w.chain)}/pool_{int(w.n) - 1}.npz",
    output:
        pool=f"{RES}/2d/{{dataset}}/{{chain}}/pool_{{n}}.npz",
        record=f"{RES}/2d/{{dataset}}/{{chain}}/pool_{{n}}.json",
    wildcard_constraints:
        n=r"[1-9]\d*",
        chain=LFM_CHAINS,
    log:
        f"{RES}/logs/{{chain}}/push_{{dataset}}_block{{n}}.log",
    benchmark:
        f"{RES}/benchmarks/{{chain}}/push_{{dataset}}_block{{n}}.tsv"
    params:
        p=lambda w: LFM["push"],
        block=lambda w: f"{lfm_dir(w.dataset, w.chain)}/block_{w.n}",
    priority: 20  # a long sequential chain or the inputs of many jobs: start it first
    threads: stage_threads("sample")
    resources:
        **stage_resources("sample"),
    conda:
        ENV
    shell:
        "{CLI} lfm push --block-dir {params.block:q} --pool {input.pool:q} --solver dopri5 --rtol {params.p[rtol]:q}"
        " --atol {params.p[atol]:q} --batch-size {params.p[batch_size]:q} --threads {threads} --quiet"
        " --out {output.pool:q} > {log:q} 2>&1"


rule lfm_distill:
    # teacher pairs (pool_n, pool_{n-1}) are block n's dopri5 flow on its pool: no extra teacher solves
    input:
        weights=f"{RES}/2d/{{dataset}}/{{chain}}/block_{{n}}/ema.safetensors",
        pool_in=lambda w: f"{lfm_dir(w.dataset, w.chain)}/pool_{int(w.n) - 1}.npz",
        pool_out=f"{RES}/2d/{{dataset}}/{{chain}}/pool_{{n}}.npz",
    output:
        weights=f"{RES}/2d/{{dataset}}/{{chain}}/student_{{n}}/student.safetensors",
        spec=f"{RES}/2d/{{dataset}}/{{chain}}/student_{{n}}/run.json",
    wildcard_constraints:
        n=r"[1-9]\d*",
        chain=LFM_CHAINS,
    log:
        f"{RES}/logs/{{chain}}/distill_{{dataset}}_block{{n}}.log",
    benchmark:
        f"{RES}/benchmarks/{{chain}}/distill_{{dataset}}_block{{n}}.tsv"
    params:
        d=lambda w: LFM["distill"],
        seed=lambda w: chain_train(LFM, w.chain)["seed"],
        block=lambda w: f"{lfm_dir(w.dataset, w.chain)}/block_{w.n}",
        out=lambda w: f"{lfm_dir(w.dataset, w.chain)}/student_{w.n}",
    threads: stage_threads("train")
    resources:
        **stage_resources("train", one_process=True),
    conda:
        ENV
    shell:
        "{CLI} lfm distill --blocks {params.block:q} --pool-in {input.pool_in:q} --pool-out {input.pool_out:q}"
        " --steps {params.d[steps]:q} --batch-size {params.d[batch_size]:q} --lr {params.d[lr]:q}"
        " --warmup-steps {params.d[warmup_steps]:q} --seed {params.seed:q} --threads {threads} --quiet"
        " --out {params.out:q} > {log:q} 2>&1"


rule lfm_sample:
    # samples and their 2D metrics in one process, as sample_2d; the NFE in each record is counted
    input:
        chain=lfm_chain_weights,
        reference=f"{RES}/2d/{{dataset}}/reference_seed{{seed}}.npz",
    output:
        samples=f"{RES}/2d/{{dataset}}/{{chain}}/samples/{{lfm_solver}}_{{setting}}_seed{{seed}}.npz",
        metrics=f"{RES}/2d/{{dataset}}/{{chain}}/metrics/{{lfm_solver}}_{{setting}}_seed{{seed}}.csv",
    wildcard_constraints:
        lfm_solver="|".join(LFM_SOLVERS),
        setting=r"nfe\d+|tol[0-9.e+-]+",
        chain=LFM_CHAINS,
    log:
        f"{RES}/logs/{{chain}}/sample_{{dataset}}_{{lfm_solver}}_{{setting}}_seed{{seed}}.log",
    benchmark:
        f"{RES}/benchmarks/{{chain}}/sample_{{dataset}}_{{lfm_solver}}_{{setting}}_seed{{seed}}.tsv"
    params:
        s=lambda w: LFM["sample"],
        chain=lambda w: lfm_chain(w.dataset, w.lfm_solver, w.chain),
        opts=lfm_solver_options,
    threads: stage_threads("sample")
    resources:
        **stage_resources("sample"),
    conda:
        ENV
    shell:
        "{CLI} lfm sample --blocks {params.chain:q} --run {wildcards.chain:q} --solver {wildcards.lfm_solver:q}"
        " {params.opts}"
        " --num-samples {params.s[num_samples]:q} --block-size {params.s[block_size]:q} --seed {wildcards.seed}"
        " --reference {input.reference:q} --knn-points {params.s[knn_points]:q} --threads {threads} --quiet"
        " --metrics-out {output.metrics:q} --out {output.samples:q} > {log:q} 2>&1"


rule lfm_nll:
    input:
        chain=lambda w: [f"{d}/ema.safetensors" for d in lfm_chain(w.dataset, "block", w.chain)],
        reference=f"{RES}/2d/{{dataset}}/reference_seed{{seed}}.npz",
    output:
        f"{RES}/2d/{{dataset}}/{{chain}}/metrics/nll_seed{{seed}}.csv",
    wildcard_constraints:
        chain=LFM_CHAINS,
    log:
        f"{RES}/logs/{{chain}}/nll_{{dataset}}_seed{{seed}}.log",
    benchmark:
        f"{RES}/benchmarks/{{chain}}/nll_{{dataset}}_seed{{seed}}.tsv"
    params:
        n=lambda w: LFM["nll"],
        chain=lambda w: lfm_chain(w.dataset, "block", w.chain),
    priority: 20  # a long sequential chain or the inputs of many jobs: start it first
    threads: stage_threads("evaluate")
    resources:
        **stage_resources("evaluate"),
    conda:
        ENV
    shell:
        "{CLI} lfm nll --blocks {params.chain:q} --run {wildcards.chain:q} --reference {input.reference:q}"
        " --num-points {params.n[num_points]:q}"
        " --method {params.n[method]:q} --num-steps {params.n[num_steps]:q} --tol {params.n[tol]:q}"
        " --seed {wildcards.seed} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule lfm_nll_flow:
    # the same NLL of a flow-matching run of the 2D sweep (one flow; as many ODE steps as the whole LFM chain)
    input:
        weights=f"{RES}/2d/{{dataset}}/{{run}}/ema.safetensors",
        spec=f"{RES}/2d/{{dataset}}/{{run}}/run.json",
        reference=f"{RES}/2d/{{dataset}}/reference_seed{{seed}}.npz",
    output:
        f"{RES}/2d/{{dataset}}/lfm/metrics/nll-flow_{{run}}_seed{{seed}}.csv",
    log:
        f"{RES}/logs/lfm/nll-flow_{{dataset}}_{{run}}_seed{{seed}}.log",
    benchmark:
        f"{RES}/benchmarks/lfm/nll-flow_{{dataset}}_{{run}}_seed{{seed}}.tsv"
    params:
        n=lambda w: LFM["nll"],
        steps=lambda w: LFM["nll"]["num_steps"] * LFM["num_blocks"],
        run_dir=lambda w: f"{RES}/2d/{w.dataset}/{w.run}",
    threads: stage_threads("evaluate")
    resources:
        **stage_resources("evaluate"),
    conda:
        ENV
    shell:
        "{CLI} lfm nll --flow-run {params.run_dir:q} --reference {input.reference:q}"
        " --num-points {params.n[num_points]:q} --method {params.n[method]:q} --num-steps {params.steps:q}"
        " --tol {params.n[tol]:q} --seed {wildcards.seed} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule lfm_table:
    input:
        lambda w: lfm_metric_files(),
    output:
        f"{RES}/tables/lfm_2d.csv",
    log:
        f"{RES}/logs/lfm/table.log",
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        ENV
    benchmark:
        f"{RES}/benchmarks/lfm_table/job.tsv"
    shell:
        "{CLI} report --inputs {input:q} --out {output:q} > {log:q} 2>&1"


rule lfm_published:
    # the LFM paper's numbers as read in reviews of its submission (SECOND-HAND), shown beside ours
    input:
        f"{ROOT}/data/published/lfm_2024.csv",
    output:
        f"{RES}/tables/published_lfm.csv",
    log:
        f"{RES}/logs/lfm/published.log",
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        ENV
    benchmark:
        f"{RES}/benchmarks/lfm_published/job.tsv"
    shell:
        "cp {input:q} {output:q} > {log:q} 2>&1"


rule lfm_report:
    # after the 2D table, so that FM and GMFlow are always shown beside LFM
    input:
        table=rules.lfm_table.output,
        table_2d=f"{RES}/tables/2d.csv",
        published=rules.lfm_published.output,
        records=lambda w: lfm_report_inputs(),
        notebook=f"{ROOT}/notebooks/lfm_2d.ipynb",
    output:
        notebook=f"{RES}/reports/lfm_2d.ipynb",
        html=f"{RES}/reports/lfm_2d.html",
    log:
        f"{RES}/logs/lfm/report.log",
    params:
        results=RES,
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        ENV
    benchmark:
        f"{RES}/benchmarks/lfm_report/job.tsv"
    shell:
        "{PY} {ROOT}/workflow/scripts/render_notebook.py --notebook {input.notebook:q}"
        " --out {output.notebook:q} --html {output.html:q} -p results {params.results:q} > {log:q} 2>&1"
