"""The loss names attacks take, defined once; torch-free, so the pre-flight validation imports them cheaply."""

LOSSES = ("ce", "margin")  # every attack's (advlab-eval's robustness curves run each)
# an attack's own loss may also be DLR (APGD-DLR; needs 3 classes) or KL(y ‖ softmax(logits)): with soft
# targets y (class distributions, (N, C)) TRADES' attack on its KL term, with class indices cross-entropy
NODE_LOSSES = LOSSES + ("dlr", "kl")
