# Report: the long-format table, the measured targets, and the rendered notebook (HTML under results/reports/).


rule table_2d:
    input:
        lambda w: metric_files_2d(),
    output:
        f"{RES}/tables/2d.csv",
    log:
        f"{RES}/logs/report/table_2d.log",
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        ENV
    benchmark:
        f"{RES}/benchmarks/table_2d/job.tsv"
    shell:
        "{CLI} report --inputs {input:q} --out {output:q} > {log:q} 2>&1"


rule targets_2d:
    input:
        table=rules.table_2d.output,
    output:
        f"{RES}/benchmarks/2d_targets.csv",
    log:
        f"{RES}/logs/report/targets_2d.log",
    params:
        benchmarks=f"{RES}/benchmarks",
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        ENV
    benchmark:
        f"{RES}/benchmarks/targets_2d/job.tsv"
    shell:
        "{PY} {ROOT}/workflow/scripts/targets_2d.py --table {input.table:q}"
        " --benchmarks {params.benchmarks:q} --out {output:q} > {log:q} 2>&1"


rule report_2d:
    input:
        table=rules.table_2d.output,
        targets=rules.targets_2d.output,
        notebook=f"{ROOT}/notebooks/2d_toy.ipynb",
    output:
        notebook=f"{RES}/reports/2d_toy.ipynb",
        html=f"{RES}/reports/2d_toy.html",
    log:
        f"{RES}/logs/report/report_2d.log",
    params:
        results=RES,
        nfe=",".join(str(n) for n in config["report"]["histogram_nfe"]),
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        ENV
    benchmark:
        f"{RES}/benchmarks/report_2d/job.tsv"
    shell:
        "{PY} {ROOT}/workflow/scripts/render_notebook.py --notebook {input.notebook:q} --out {output.notebook:q}"
        " --html {output.html:q} -p results {params.results:q} -p histogram_nfe {params.nfe:q} > {log:q} 2>&1"


def bandwidth_inputs():
    """Inputs of the bandwidth table: the 2D sample-set metrics, every LFM chain's metrics and NLL and the flow
    matching runs' NLL (lfm.smk), and the records that hold each network's min_period."""
    runs = [f"{RES}/2d/{d}/{run}" for d, runs in TOY["experiments"].items() for run in runs]
    metrics = [f for f in metric_files_2d() if "/reference/" not in f]
    chains = []
    if LFM is not None:
        for chain in chains_2d(LFM):
            metrics += lfm_metric_files(chain, flow_runs=chain == MAIN_CHAIN_2D)
        chains = [c for d in LFM["datasets"] for c in lfm_chain_dirs_2d(d)]
    specs = [f"{r}/run.json" for r in runs] + [f"{c}/block_{n}/run.json" for c in chains for n in lfm_blocks()]
    return dict(metrics=metrics, specs=specs, runs=runs, chains=chains)


rule bandwidth_2d:
    # position-feature bandwidth (min_period) beside TV and exact NLL, per dataset, run or chain, solver
    input:
        metrics=lambda w: bandwidth_inputs()["metrics"],
        specs=lambda w: bandwidth_inputs()["specs"],
        script=f"{ROOT}/workflow/scripts/bandwidth_2d.py",
    output:
        f"{RES}/tables/bandwidth_2d.csv",
    log:
        f"{RES}/logs/report/bandwidth_2d.log",
    params:
        runs=lambda w: bandwidth_inputs()["runs"],
        chains=lambda w: bandwidth_inputs()["chains"],
        nfe=lambda w: TOY["sample"]["nfe"],
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        ENV
    benchmark:
        f"{RES}/benchmarks/bandwidth_2d/job.tsv"
    shell:
        "{PY} {input.script:q} --metrics {input.metrics:q} --runs {params.runs:q} --chains {params.chains:q}"
        " --nfe {params.nfe} --out {output:q} > {log:q} 2>&1"


rule table_images:
    input:
        lambda w: image_metric_files(),
    output:
        f"{RES}/tables/images.csv",
    log:
        f"{RES}/logs/report/table_images.log",
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        ENV
    benchmark:
        f"{RES}/benchmarks/table_images/job.tsv"
    shell:
        "{CLI} report --inputs {input:q} --out {output:q} > {log:q} 2>&1"


rule published_numbers:
    # the papers' numbers, copied into the project (data/published), beside ours in every notebook
    input:
        f"{ROOT}/data/published/gmflow_icml2025.csv",
    output:
        f"{RES}/tables/published_gmflow.csv",
    log:
        f"{RES}/logs/report/published_numbers.log",
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        ENV
    benchmark:
        f"{RES}/benchmarks/published_numbers/job.tsv"
    shell:
        "cp {input:q} {output:q} > {log:q} 2>&1"


rule paper_tables:
    # the paper's tables and figures from the long image table, beside the published numbers (read by the notebooks)
    input:
        table=rules.table_images.output,
        published=rules.published_numbers.output,
        script=f"{ROOT}/workflow/scripts/paper_tables.py",
    output:
        fig6=f"{RES}/tables/fig6_nfe.csv",
        fig7=f"{RES}/tables/fig7_k.csv",
        table2=f"{RES}/tables/table2_guidance.csv",
        table3=f"{RES}/tables/table3_nll.csv",
        table4=f"{RES}/tables/table4_ablation.csv",
        fig8=f"{RES}/tables/fig8_pairs.csv",
        claims=f"{RES}/tables/claims.csv",
    log:
        f"{RES}/logs/report/paper_tables.log",
    params:
        results=RES,
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        ENV
    benchmark:
        f"{RES}/benchmarks/paper_tables/job.tsv"
    shell:
        "{PY} {input.script:q} --results {params.results:q} > {log:q} 2>&1"


def seed_twin_args():
    """`--twin RUN0=SEED0 RUN1=SEED1` per pair of seed twins among the image runs (their training seeds)."""
    pairs = seed_twins(IMG) if IMG else []
    return " ".join(shlex.join(["--twin", *(f"{r}={image_run_option(r, 'seed')}" for r in p)]) for p in pairs)


rule seed_spread:
    # the spread between training seeds of seed-twin runs (images.runs.{run}.seed) beside the generated-set
    # intervals, and the GMFlow-minus-FM difference under each seed (config/seeds.yaml)
    input:
        table=rules.table_images.output,
        script=f"{ROOT}/workflow/scripts/seed_spread.py",
    output:
        f"{RES}/tables/seed_spread.csv",
    log:
        f"{RES}/logs/report/seed_spread.log",
    params:
        twins=lambda w: seed_twin_args(),
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        ENV
    benchmark:
        f"{RES}/benchmarks/seed_spread/job.tsv"
    shell:
        "{PY} {input.script:q} --table {input.table:q} {params.twins} --out {output:q} > {log:q} 2>&1"


rule report_images:
    input:
        table=rules.table_images.output,
        targets=f"{RES}/benchmarks/images_targets.csv",
        paper_tables=rules.paper_tables.output,
        published=rules.published_numbers.output,
        notebook=f"{ROOT}/notebooks/{{notebook}}.ipynb",
    output:
        notebook=f"{RES}/reports/{{notebook}}.ipynb",
        html=f"{RES}/reports/{{notebook}}.html",
    wildcard_constraints:
        notebook="|".join(IMAGE_NOTEBOOKS),
    log:
        f"{RES}/logs/report/{{notebook}}.log",
    params:
        results=RES,
        samples=lambda w: f"{RES}/images/{IMG['dataset']}",
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        ENV
    benchmark:
        f"{RES}/benchmarks/report_images/{{notebook}}.tsv"
    shell:
        "{PY} {ROOT}/workflow/scripts/render_notebook.py --notebook {input.notebook:q}"
        " --out {output.notebook:q} --html {output.html:q} -p results {params.results:q} > {log:q} 2>&1"


rule bench_images:
    # timing benchmarks; they take every core so that no other job runs beside them (on SLURM: a node of their own)
    output:
        dit=f"{RES}/benchmarks/dit_step.csv",
        dit_spectral=f"{RES}/benchmarks/dit_step_spectral.csv",
        overhead=f"{RES}/benchmarks/gm_overhead.csv",
    log:
        f"{RES}/logs/report/bench_images.log",
    params:
        net=lambda w: IMG["train"]["network"],
        batch=lambda w: IMG["train"]["batch_size"],
        block=lambda w: IMG["sample"]["block_size"],
        dit=lambda w: dit_opts(),
    threads: all_cores()
    resources:
        **stage_resources("report"),
        slurm_extra="--exclusive",
    conda:
        ENV
    benchmark:
        f"{RES}/benchmarks/bench_images/job.tsv"
    shell:
        "({PY} {ROOT}/workflow/scripts/bench_dit.py --variant {params.net:q} {params.dit} --batch {params.batch:q}"
        " --threads 1 --out {output.dit:q}"
        " && {PY} {ROOT}/workflow/scripts/bench_dit.py --variant {params.net:q} {params.dit} --batch {params.batch:q}"
        " --threads 1 --spectral --out {output.dit_spectral:q}"
        " && {PY} {ROOT}/workflow/scripts/bench_gm_overhead.py --variant {params.net:q} {params.dit} --batch {params.block:q}"
        " --nfe 6 --threads 1 --out {output.overhead:q}) > {log:q} 2>&1"


rule targets_images:
    input:
        table=rules.table_images.output,
        dit=rules.bench_images.output.dit,
        dit_spectral=rules.bench_images.output.dit_spectral,
        overhead=rules.bench_images.output.overhead,
    output:
        f"{RES}/benchmarks/images_targets.csv",
    log:
        f"{RES}/logs/report/targets_images.log",
    params:
        benchmarks=f"{RES}/benchmarks",
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        ENV
    benchmark:
        f"{RES}/benchmarks/targets_images/job.tsv"
    shell:
        "{PY} {ROOT}/workflow/scripts/targets_images.py --table {input.table:q}"
        " --dit-bench {input.dit:q} {input.dit_spectral:q} --overhead-bench {input.overhead:q}"
        " --benchmarks {params.benchmarks:q} --out {output:q} > {log:q} 2>&1"


rule table5_cifar10:
    # the paper's Table 5 (CIFAR-10 FID vs NFE): ours beside the published numbers, "not run" where ours is missing
    input:
        table=rules.table_images.output,
        published=rules.published_numbers.output,
        script=f"{ROOT}/workflow/scripts/table5_cifar10.py",
    output:
        f"{RES}/tables/table5_cifar10.csv",
    log:
        f"{RES}/logs/report/table5_cifar10.log",
    params:
        results=RES,
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        ENV
    benchmark:
        f"{RES}/benchmarks/table5_cifar10/job.tsv"
    shell:
        "{PY} '{input.script}' --results '{params.results}' > '{log}' 2>&1"


rule report_table5_cifar10:
    input:
        table=rules.table5_cifar10.output,
        notebook=f"{ROOT}/notebooks/table5_cifar10.ipynb",
    output:
        notebook=f"{RES}/reports/table5_cifar10.ipynb",
        html=f"{RES}/reports/table5_cifar10.html",
    log:
        f"{RES}/logs/report/table5_cifar10_notebook.log",
    params:
        results=RES,
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        ENV
    benchmark:
        f"{RES}/benchmarks/report_table5_cifar10/job.tsv"
    shell:
        "{PY} '{ROOT}/workflow/scripts/render_notebook.py' --notebook '{input.notebook}'"
        " --out '{output.notebook}' --html '{output.html}' -p results '{params.results}' > '{log}' 2>&1"


rule index_html:
    # results/index.html, the page to open first: claims with verdicts, a link to every report, sample grids
    input:
        lambda w: final_targets() + lfm_final_targets() + lfm_images_final_targets(),  # after every include
    output:
        f"{RES}/index.html",
    log:
        f"{RES}/logs/report/index.log",
    params:
        nfe=config["report"]["index_nfe"],
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        ENV
    benchmark:
        f"{RES}/benchmarks/index_html/job.tsv"
    shell:
        "{CLI} index --results {RES:q} --nfe {params.nfe} --out {output:q} > {log:q} 2>&1"
