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
        except ConfigError as err:
            log.error("Bad input: %s", err)
            fail_with(f"advlab-{cfg.get('task_name', 'train')}", err)
        except Exception:
            log.exception("Run failed")
            raise
        finally:
            close_wandb(failed)

    return wrapped
