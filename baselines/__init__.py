"""Baselines on the same flow network: L2 flow matching, classic samplers, CFG (and, later, Local Flow Matching)."""
