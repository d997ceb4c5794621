# Local Flow Matching on the image dataset (docs/method.md, Sec. 7), beside flow matching and GMFlow at equal training
# samples. The blocks are the image runs' DiT with its velocity head, class-conditional with label dropout, trained with
# the image recipe (images.train); a chain's training steps in total equal the image runs' (images.train.steps), split
# evenly over its blocks. Every block, push and student is its own job with cached outputs:
#   {RES}/images/{dataset}/{chain}/pool_0.npz          training images and labels (a class-balanced prefix)
#   {RES}/images/{dataset}/{chain}/block_{n}/          block n trained on pool_{n-1} (ema.safetensors, run.json)
#   {RES}/images/{dataset}/{chain}/pool_{n}.npz(.json) pool_{n-1} pushed through block n (counted NFE, seconds)
#   {RES}/images/{dataset}/{chain}/student_{n}[-{m}]/  one-step student of blocks n..m (pairs pool_m -> pool_{n-1})
#   {RES}/images/{dataset}/{chain}/samples/{tag}.npz   sample sets, evaluated by rule evaluate_images like any run
# {chain} is 'lfm' (images.train.steps in total) or 'lfm-at{k}' (k steps in total, lfm_images.budgets).
# Needs common.smk, train.smk, evaluate.smk and report.smk; included after them.
from gmflow.experiments.lfm.config import (
    CHAIN,
    CHAIN_PATTERN,
    chain_total_steps,
    distill_groups,
    image_sample_sets,
    student_folder,
)

LFMI = config.get("lfm_images")


def lfmi_dir(w):
    return f"{RES}/images/{w.dataset}/{w.chain}"


def lfmi_blocks(w):
    return [f"{lfmi_dir(w)}/block_{n}" for n in range(1, LFMI["num_blocks"] + 1)]


def lfmi_push_settings(w):
    """The push of block n: lfm_images.push for the OU blocks, lfm_images.distill.push for the free block N."""
    return LFMI["distill"]["push"] if int(w.n) == LFMI["num_blocks"] else LFMI["push"]


def lfmi_push_opts(p):
    if p["solver"] == "dopri5":
        return f"--solver dopri5 {opt('--rtol', p['rtol'])} {opt('--atol', p['rtol'])}"
    return f"{opt('--solver', p['solver'])} {opt('--nfe', p['nfe'])}"


def lfmi_set(w):
    """The configured sample set of a (chain, tag)."""
    for s in image_sample_sets(LFMI, IMG):
        if s["chain"] == w.chain and s["tag"] == w.tag:
            return s
    raise ValueError(f"{w.chain}/samples/{w.tag} is not an LFM sample set of the config (lfm_images.sample)")


def lfmi_sample_inputs(w):
    s = lfmi_set(w)
    d = lfmi_dir(w)
    blocks = [f"{b}/ema.safetensors" for b in lfmi_blocks(w)]
    records = [f"{d}/pool_{n}.json" for n in range(1, LFMI["num_blocks"])]  # the chain's training cost
    if s["solver"] == "distilled":
        groups = distill_groups(LFMI["num_blocks"], s["num_students"])
        return blocks + records + [f"{d}/{student_folder(a, b)}/student.safetensors" for a, b in groups]
    return blocks + records


def lfmi_sample_opts(w):
    s = lfmi_set(w)
    if s["solver"] == "distilled":
        groups = distill_groups(LFMI["num_blocks"], s["num_students"])
        students = [f"{lfmi_dir(w)}/{student_folder(a, b)}" for a, b in groups]
        return shlex.join(["--blocks", *students, "--teacher-blocks", *lfmi_blocks(w), "--solver", "distilled"])
    opts = shlex.join(["--blocks", *lfmi_blocks(w), "--solver", s["solver"]])
    if s["solver"] == "dopri5":
        return f"{opts} {opt('--rtol', s['tol'])} {opt('--atol', s['tol'])}"
    return f"{opts} {opt('--nfe-per-block', s['nfe_per_block'])}"


def lfmi_metric_files():
    """LFM sample sets and the compared sweep points (flow matching, GMFlow, their snapshots): every metric file."""
    d = IMG["dataset"]
    files = [f"{RES}/images/{d}/{s['chain']}/metrics/{s['tag']}_classifier-{d}.csv" for s in image_sample_sets(LFMI, IMG)]
    files += [
        f"{RES}/images/{d}/{p['run']}/metrics/{p['tag']}_{e}.csv"
        for p in image_points(IMG)
        if set(p["sweeps"]) & set(LFMI["compare_sweeps"])
        for e in p["extractors"]
    ]
    return files


def lfmi_report_inputs():
    """Block, push and student records of the chain 'lfm' (the notebook shows how time and NFE split over blocks)."""
    d, N = f"{RES}/images/{IMG['dataset']}/{CHAIN}", LFMI["num_blocks"]
    files = [f"{d}/block_{n}/run.json" for n in range(1, N + 1)] + [f"{d}/pool_{n}.json" for n in range(1, N)]
    if LFMI["distill"]["steps"] > 0:
        groups = {g for k in LFMI["sample"]["distilled"] for g in distill_groups(N, k)}
        files += [f"{d}/{student_folder(a, b)}/run.json" for a, b in sorted(groups)]
    return files


def lfmi_group(w):
    """Blocks (first, last) of a student folder student_{first}[-{last}]."""
    first = int(w.first)
    return first, int(w.last[1:]) if w.last else first


def lfm_images_final_targets():
    """The LFM image report (it needs every LFM image output). Empty without an lfm_images section."""
    return [f"{RES}/reports/lfm_images.html"] if LFMI is not None else []


wildcard_constraints:
    chain=CHAIN_PATTERN,


rule lfmi_pool:
    output:
        f"{RES}/images/{{dataset}}/{{chain}}/pool_0.npz",
    log:
        f"{RES}/logs/lfm_images/pool_{{dataset}}_{{chain}}.log",
    params:
        num_images=lambda w: opt("--num-images", LFMI["pool_size"]),
        root=lambda w: opt("--data-root", IMG["data_root"]),
    priority: 50  # a long sequential chain or the inputs of many jobs: start it first
    threads: stage_threads("data")
    resources:
        **stage_resources("data"),
    conda:
        ENV
    benchmark:
        f"{RES}/benchmarks/lfmi_pool/{{dataset}}_{{chain}}.tsv"
    shell:
        "{CLI} lfm image-pool --dataset {wildcards.dataset:q} {params.num_images} {params.root} --out {output:q}"
        " > {log:q} 2>&1"


rule lfmi_train_block:
    # resumable (block_{n}/state.safetensors); restarts when its pool, warm start or settings changed
    input:
        pool=lambda w: f"{lfmi_dir(w)}/pool_{int(w.n) - 1}.npz",
        init=lambda w: [f"{lfmi_dir(w)}/block_{int(w.n) - 1}/ema.safetensors"] if int(w.n) > 1 else [],
    output:
        weights=f"{RES}/images/{{dataset}}/{{chain}}/block_{{n}}/ema.safetensors",
        spec=f"{RES}/images/{{dataset}}/{{chain}}/block_{{n}}/run.json",
    wildcard_constraints:
        n=r"[1-9]\d*",
    log:
        f"{RES}/logs/lfm_images/train_{{dataset}}_{{chain}}_block{{n}}.log",
    benchmark:
        f"{RES}/benchmarks/lfm_images/train_{{dataset}}_{{chain}}_block{{n}}.tsv"
    params:
        L=lambda w: LFMI,
        t=lambda w: IMG["train"],
        steps=lambda w: chain_total_steps(w.chain, IMG) // LFMI["num_blocks"],
        dit=lambda w: dit_opts(),
        init=lambda w, input: opt("--init-from", input.init[0] if input.init else None),
        out=lambda w: f"{lfmi_dir(w)}/block_{w.n}",
    priority: 50  # a long sequential chain or the inputs of many jobs: start it first
    threads: stage_threads("train")
    resources:
        **stage_resources("train", one_process=True),
    conda:
        ENV
    shell:
        "{CLI} lfm train-block --dataset {wildcards.dataset:q} --network {params.t[network]:q} {params.dit}"
        " --block {wildcards.n}"
        " --num-blocks {params.L[num_blocks]:q} --step-c {params.L[step_c]:q} --step-rho {params.L[step_rho]:q}"
        " --interpolant {params.L[interpolant]:q} --pool {input.pool:q} {params.init} --steps {params.steps:q}"
        " --batch-size {params.t[batch_size]:q} --lr {params.t[lr]:q} --warmup-steps {params.t[warmup_steps]:q}"
        " --ema-gamma {params.t[ema_gamma]:q} --grad-clip {params.t[grad_clip]:q}"
        " --label-dropout {params.t[label_dropout]:q} --checkpoint-every {params.t[checkpoint_every]:q}"
        " --seed {params.t[seed]:q} --threads {threads} --quiet --out {params.out:q} > {log:q} 2>&1"


rule lfmi_push:
    # pool_n = pool_{n-1} pushed through block n; pool_N (through the free block) feeds distillation only
    input:
        weights=f"{RES}/images/{{dataset}}/{{chain}}/block_{{n}}/ema.safetensors",
        pool=lambda w: f"{lfmi_dir(w)}/pool_{int(w.n) - 1}.npz",
    output:
        pool=f"{RES}/images/{{dataset}}/{{chain}}/pool_{{n}}.npz",
        record=f"{RES}/images/{{dataset}}/{{chain}}/pool_{{n}}.json",
    wildcard_constraints:
        n=r"[1-9]\d*",
    log:
        f"{RES}/logs/lfm_images/push_{{dataset}}_{{chain}}_block{{n}}.log",
    benchmark:
        f"{RES}/benchmarks/lfm_images/push_{{dataset}}_{{chain}}_block{{n}}.tsv"
    params:
        p=lambda w: lfmi_push_settings(w),
        opts=lambda w: lfmi_push_opts(lfmi_push_settings(w)),
        block=lambda w: f"{lfmi_dir(w)}/block_{w.n}",
    priority: 50  # a long sequential chain or the inputs of many jobs: start it first
    threads: stage_threads("sample")
    resources:
        **stage_resources("sample"),
    conda:
        ENV
    shell:
        "{CLI} lfm push --block-dir {params.block:q} --pool {input.pool:q} {params.opts}"
        " --batch-size {params.p[batch_size]:q} --threads {threads} --quiet --out {output.pool:q} > {log:q} 2>&1"


rule lfmi_distill:
    # one student of blocks first..last: teacher pairs (pool_last, pool_{first-1}) are the chain's own pushes
    input:
        blocks=lambda w: [f"{lfmi_dir(w)}/block_{n}/ema.safetensors" for n in range(lfmi_group(w)[0], lfmi_group(w)[1] + 1)],
        pool_in=lambda w: f"{lfmi_dir(w)}/pool_{lfmi_group(w)[0] - 1}.npz",
        pool_out=lambda w: f"{lfmi_dir(w)}/pool_{lfmi_group(w)[1]}.npz",
    output:
        weights=f"{RES}/images/{{dataset}}/{{chain}}/student_{{first}}{{last}}/student.safetensors",
        spec=f"{RES}/images/{{dataset}}/{{chain}}/student_{{first}}{{last}}/run.json",
    wildcard_constraints:
        first=r"[1-9]\d*",
        last=r"(-[1-9]\d*)?",
    log:
        f"{RES}/logs/lfm_images/distill_{{dataset}}_{{chain}}_{{first}}{{last}}.log",
    benchmark:
        f"{RES}/benchmarks/lfm_images/distill_{{dataset}}_{{chain}}_{{first}}{{last}}.tsv"
    params:
        d=lambda w: LFMI["distill"],
        seed=lambda w: IMG["train"]["seed"],
        blocks=lambda w: [f"{lfmi_dir(w)}/block_{n}" for n in range(lfmi_group(w)[0], lfmi_group(w)[1] + 1)],
        out=lambda w: f"{lfmi_dir(w)}/student_{w.first}{w.last}",
    priority: 50  # a long sequential chain or the inputs of many jobs: start it first
    threads: stage_threads("train")
    resources:
        **stage_resources("train", one_process=True),
    conda:
        ENV
    shell:
        "{CLI} lfm distill --blocks {params.blocks:q} --pool-in {input.pool_in:q} --pool-out {input.pool_out:q}"
        " --steps {params.d[steps]:q} --batch-size {params.d[batch_size]:q} --lr {params.d[lr]:q}"
        " --warmup-steps {params.d[warmup_steps]:q} --seed {params.seed:q} --threads {threads} --quiet"
        " --out {params.out:q} > {log:q} 2>&1"


rule lfmi_sample:
    # an image sample set of a chain in the image sweeps' file format; rule evaluate_images computes its metrics
    input:
        lfmi_sample_inputs,
    output:
        f"{RES}/images/{{dataset}}/{{chain}}/samples/{{tag}}.npz",
    log:
        f"{RES}/logs/lfm_images/sample_{{dataset}}_{{chain}}_{{tag}}.log",
    benchmark:
        f"{RES}/benchmarks/lfm_images/sample_{{dataset}}_{{chain}}_{{tag}}.tsv"
    params:
        s=lambda w: IMG["sample"],
        opts=lfmi_sample_opts,
        seed=lambda w: lfmi_set(w)["seed"],
    threads: stage_threads("sample")
    resources:
        **stage_resources("sample"),
    conda:
        ENV
    shell:
        "{CLI} lfm sample {params.opts} --run {wildcards.chain:q} --num-samples {params.s[num_samples]:q}"
        " --block-size {params.s[block_size]:q} --seed {params.seed:q} --threads {threads} --quiet"
        " --out {output:q} > {log:q} 2>&1"


rule lfmi_table:
    input:
        lambda w: lfmi_metric_files(),
    output:
        f"{RES}/tables/lfm_images.csv",
    log:
        f"{RES}/logs/lfm_images/table.log",
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        ENV
    benchmark:
        f"{RES}/benchmarks/lfmi_table/job.tsv"
    shell:
        "{CLI} report --inputs {input:q} --out {output:q} > {log:q} 2>&1"


rule lfmi_report:
    input:
        table=rules.lfmi_table.output,
        published=f"{RES}/tables/published_lfm.csv",
        records=lambda w: lfmi_report_inputs(),
        notebook=f"{ROOT}/notebooks/lfm_images.ipynb",
    output:
        notebook=f"{RES}/reports/lfm_images.ipynb",
        html=f"{RES}/reports/lfm_images.html",
    log:
        f"{RES}/logs/lfm_images/report.log",
    params:
        results=RES,
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    conda:
        ENV
    benchmark:
        f"{RES}/benchmarks/lfmi_report/job.tsv"
    shell:
        "{PY} {ROOT}/workflow/scripts/render_notebook.py --notebook {input.notebook:q}"
        " --out {output.notebook:q} --html {output.html:q} -p results {params.results:q}"
        " > {log:q} 2>&1"
