"""advlab: a Hydra + PyTorch Lightning pipeline for research on adversarial examples.

From Python: `advlab.load_run(run_dir)` (see `advlab.api`), attacks in `advlab.attacks`.
"""
__version__ = "0.1.0"


def __getattr__(name: str):
    # lazy: the command-line apps import this package first and must start fast
    if name in ("load_run", "LoadedRun"):
        from advlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'advlab' has no attribute {name!r}")
