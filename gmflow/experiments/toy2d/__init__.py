"""The 2D experiment of the paper (Figs. 1-3): a toy MLP trained on the checkerboard or a Gaussian ring, sampled with
every solver, measured against the exact density."""
