"""Plots and files written into a run's output directory."""
