# Sampling: one job per (dataset, run, solver, NFE, seed); the NFE in each output is counted, not assumed.


rule sample_2d:
    input:
        weights=rules.train_2d.output.weights,
        spec=rules.train_2d.output.spec,
    output:
        f"{RES}/2d/{{dataset}}/{{run}}/samples/{{solver}}_nfe{{nfe}}_gnone_seed{{seed}}.npz",
    log:
        f"{RES}/logs/sample_2d/{{dataset}}_{{run}}_{{solver}}_nfe{{nfe}}_seed{{seed}}.log",
    benchmark:
        f"{RES}/benchmarks/sample_2d/{{dataset}}_{{run}}_{{solver}}_nfe{{nfe}}_seed{{seed}}.tsv"
    params:
        s=TOY["sample"],
        run_dir=lambda w: f"{RES}/2d/{w.dataset}/{w.run}",
    threads: THREADS
    conda:
        ENV
    resources:
        mem_mb=3000,
    shell:
        "{CLI} sample --run-dir {params.run_dir} --solver '{wildcards.solver}' --nfe {wildcards.nfe}"
        " --num-samples {params.s[num_samples]} --block-size {params.s[block_size]} --substeps {params.s[substeps]}"
        " --seed {wildcards.seed} --threads {threads} --out '{output}' > '{log}' 2>&1"
