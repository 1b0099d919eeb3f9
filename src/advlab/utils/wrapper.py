"""`task_wrapper`: bad input → one line and exit code 2; the W&B run is always closed.

In a Hydra multirun a failing job must not stop the others: its error goes to `error.txt` in its
job directory (the sweep report names it) and the sweep goes on; the sweep's end reports failures.
"""
from __future__ import annotations

import functools
import logging
import sys
import traceback
from pathlib import Path

from advlab.errors import ConfigError

log = logging.getLogger(__name__)


def close_wandb(failed: bool) -> None:
    if "wandb" not in sys.modules:
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)


def config_error_in(exc: BaseException) -> ConfigError | None:
    """The ConfigError behind an exception, if any (Hydra's instantiate wraps constructor errors)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ConfigError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def fail_with(prog: str, err: ConfigError) -> None:
    print(f"{prog}: error: {err}", file=sys.stderr)
    raise SystemExit(2)


ERROR_FILE = "error.txt"


def _multirun_job_dir() -> Path | None:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        return Path(hydra_cfg.runtime.output_dir) if hydra_cfg.mode == RunMode.MULTIRUN else None
    except Exception:
        return None


def record_failure(job_dir: Path, exc: BaseException) -> None:
    """`error.txt`: first line the one-line error, then the traceback."""
    from advlab.utils.io import write_text

    first = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    write_text(job_dir / ERROR_FILE, first + "\n\n" + "".join(traceback.format_exception(exc)))


def task_wrapper(task):
    @functools.wraps(task)
    def wrapped(cfg):
        from advlab.utils.quiet import silence_third_party

        silence_third_party()
        failed = True
        try:
            result = task(cfg)
            failed = False
            job_dir = _multirun_job_dir()
            if job_dir is not None:  # a re-run of a failed job that now succeeds
                (job_dir / ERROR_FILE).unlink(missing_ok=True)
            return result
        except Exception as exc:
            err = config_error_in(exc)
            job_dir = _multirun_job_dir()
            if job_dir is not None:  # one job of a sweep: record it, let the others run
                log.exception("Job failed (recorded in %s; the sweep goes on)", job_dir / ERROR_FILE)
                record_failure(job_dir, err or exc)
                return None
            if err is None:
                log.exception("Run failed")
                raise
            log.error("Bad input: %s", err)
            fail_with(f"advlab-{cfg.get('task_name', 'train')}", err)
        finally:
            close_wandb(failed)

    return wrapped
