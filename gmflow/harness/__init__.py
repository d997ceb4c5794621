"""The harness: data, networks, training loop, sampling driver, metrics, registry and CLI.

It sits above the pure method libraries (:mod:`gmflow` core and :mod:`baselines`) and is the only layer that does
file I/O. Snakemake rules call its CLI (:mod:`gmflow.harness.cli`).
"""
