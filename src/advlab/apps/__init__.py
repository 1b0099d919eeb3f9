"""advlab's command-line apps, one module each: train, evaluate (advlab-eval), transfer, probe, data,
report and cache. Each is a thin entry point over the pipeline's packages."""
