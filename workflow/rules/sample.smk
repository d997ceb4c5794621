# Sampling: one job per (dataset, run, solver, NFE, seed); the NFE in each output is counted, not assumed.


rule sample_2d:
    # samples and their metrics against the exact density in one process (a 2D sample set takes seconds, so a
    # second job start per set would double the run time); `gmflow-bench evaluate` recomputes metrics alone
    input:
        weights=rules.train_2d.output.weights,
        spec=rules.train_2d.output.spec,
        reference=f"{RES}/2d/{{dataset}}/reference_seed{{seed}}.npz",
    output:
        samples=f"{RES}/2d/{{dataset}}/{{run}}/samples/{{solver}}_nfe{{nfe}}_gnone_seed{{seed}}.npz",
        metrics=f"{RES}/2d/{{dataset}}/{{run}}/metrics/{{solver}}_nfe{{nfe}}_gnone_seed{{seed}}.csv",
    log:
        f"{RES}/logs/sample_2d/{{dataset}}_{{run}}_{{solver}}_nfe{{nfe}}_seed{{seed}}.log",
    benchmark:
        f"{RES}/benchmarks/sample_2d/{{dataset}}_{{run}}_{{solver}}_nfe{{nfe}}_seed{{seed}}.tsv"
    params:
        s=lambda w: TOY["sample"],
        run_dir=lambda w: f"{RES}/2d/{w.dataset}/{w.run}",
    threads: stage_threads("sample")
    resources:
        **stage_resources("sample"),
    conda:
        ENV
    shell:
        "{CLI} 2d sample --run-dir {params.run_dir:q} --solver {wildcards.solver:q} --nfe {wildcards.nfe}"
        " --num-samples {params.s[num_samples]:q} --block-size {params.s[block_size]:q}"
        " --substeps {params.s[substeps]:q} --seed {wildcards.seed} --threads {threads} {DEVICE} --reference {input.reference:q}"
        " --knn-points {params.s[knn_points]:q} --metrics-out {output.metrics:q} --out {output.samples:q}"
        " > {log:q} 2>&1"


rule sample_images:
    # one job per sweep point; the file name holds every setting that changes the samples
    input:
        weights=f"{RES}/images/{{dataset}}/{{run}}/ema.safetensors",  # a trained run or a snapshot run
        spec=f"{RES}/images/{{dataset}}/{{run}}/run.json",
    output:
        f"{RES}/images/{{dataset}}/{{run}}/samples/{{tag}}.npz",
    wildcard_constraints:  # a trained run or its snapshot '{run}-at{k}' (LFM chains have their own rule)
        run=f"(?:{'|'.join(IMG['runs'])})(?:-at\\d+)?" if IMG else "^$",
    log:
        f"{RES}/logs/sample_images/{{dataset}}_{{run}}_{{tag}}.log",
    benchmark:
        f"{RES}/benchmarks/sample_images/{{dataset}}_{{run}}_{{tag}}.tsv"
    params:
        p=lambda w: parse_tag(w.tag),
        s=lambda w: IMG["sample"],
        spectral=lambda w: "--spectral" if parse_tag(w.tag)["spectral"] else "",
        run_dir=lambda w: f"{RES}/images/{w.dataset}/{w.run}",
        vae=vae_args,  # latent datasets: decoded into images here, so every sample set on disk is images
    threads: stage_threads("sample")
    resources:
        **stage_resources("sample"),
    conda:
        ENV
    shell:
        "{CLI} images sample --run-dir {params.run_dir:q} --solver {params.p[solver]:q} --nfe {params.p[nfe]:q}"
        " --guidance {params.p[guidance]:q} --guidance-scale {params.p[scale]:q} --orthogonal {params.p[orthogonal]:q}"
        " --substeps {params.p[substeps]:q} {params.spectral} --num-samples {params.s[num_samples]:q}"
        " --block-size {params.s[block_size]:q} --seed {params.p[seed]:q} {params.vae} --threads {threads} {DEVICE} --quiet"
        " --out {output:q} > {log:q} 2>&1"
