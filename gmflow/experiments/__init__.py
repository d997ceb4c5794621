"""The experiments, one package each over the shared parts of :mod:`gmflow.harness`:

- :mod:`gmflow.experiments.toy2d`: the paper's 2D experiment (Figs. 1-3) against exact densities;
- :mod:`gmflow.experiments.images`: class-conditional images (the paper's Tables 2-4 and Figs. 6-8 at small scale);
- :mod:`gmflow.experiments.lfm`: Local Flow Matching as a baseline on the data of both.

Each holds its stages, its config checks, its tables and its command-line sub-commands; :mod:`gmflow.experiments.cli`
only collects them. Imports point one way: experiments -> :mod:`gmflow.harness` -> :mod:`gmflow` / :mod:`baselines`.
"""
