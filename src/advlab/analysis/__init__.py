"""Analyses of trained models, one idea per module: robustness curves, DeepFool minimal
perturbations, off-support softmax behaviour, linearity along the FGSM direction, and the
mean ± SEM summaries over seeds that advlab-eval reports."""
