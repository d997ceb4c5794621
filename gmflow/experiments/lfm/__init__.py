"""Local Flow Matching as a baseline on the 2D and the image data: blocks, chains, config checks and the
``gmflow-bench lfm`` commands."""
