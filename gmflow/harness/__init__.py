"""Shared parts of the experiments: files and provenance, argument types, the config schema, seeding, data, networks,
the training loop and its losses, the model adapters and the block sampling driver, features and metrics, and the
report helpers of the notebooks.

Nothing here knows an experiment: the experiments (:mod:`gmflow.experiments`) import these parts, never the other way
round. The method itself (:mod:`gmflow` core, :mod:`baselines`) sits below and does no file I/O.
"""
