"""What every run does around its work: how an app starts (hydra_app), the task wrapper (one-line
errors, signals), the run lifecycle (data and cache first, loggers, metrics.json), the loggers and the
config resolvers."""
