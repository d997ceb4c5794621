"""The class-conditional image experiment (the paper's Tables 2-4 and Figs. 6-8 at small scale): stages, sweeps, the
paper tables and claims, and the ``gmflow-bench images`` commands."""
