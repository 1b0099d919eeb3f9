"""`task_wrapper`: bad input → one line and exit code 2; the W&B run is always closed."""
from __future__ import annotations

import functools
import logging
import sys

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


def task_wrapper(task):
    @functools.wraps(task)
    def wrapped(cfg):
        failed = True
        try:
            result = task(cfg)
            failed = False
            return result
        except Exception as exc:
            err = config_error_in(exc)
            if err is None:
                log.exception("Run failed")
                raise
            log.error("Bad input: %s", err)
            fail_with(f"advlab-{cfg.get('task_name', 'train')}", err)
        finally:
            close_wandb(failed)

    return wrapped
