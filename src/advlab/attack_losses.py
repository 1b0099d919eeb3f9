"""The loss names attacks take, defined once; torch-free, so the pre-flight validation imports them cheaply."""

LOSSES = ("ce", "margin")  # every attack's (advlab-eval's robustness curves run each)
NODE_LOSSES = LOSSES + ("dlr",)  # an attack's own loss may also be DLR (APGD-DLR; needs 3 classes)
