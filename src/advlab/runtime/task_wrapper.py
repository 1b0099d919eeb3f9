"""`task_wrapper`: bad input → one line and exit code 2; SIGTERM / SIGINT → the work so far saved,
one line saying how to resume and exit code 143 / 130 (`advlab.utils.signals`); the W&B run is
always closed.

In a Hydra multirun a failing job must not stop the others: its error goes to `error.txt` in its
job directory (the sweep report names it) and the sweep goes on; the sweep's end reports failures.
A signal stops the sweep: the job's `error.txt` holds the resume line, and the process exits with
the signal's code.
"""
from __future__ import annotations

import functools
import logging
import sys
import traceback
from pathlib import Path

from advlab.errors import ConfigError
from advlab.utils import signals

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


def _hydra_config():
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get()
    except Exception:  # not inside a Hydra job (the Python API)
        return None


def _sweep_overrides(sweep_dir: Path) -> list[str] | None:
    """The overrides a multirun was started with (Hydra records them in <sweep dir>/multirun.yaml)."""
    try:
        from omegaconf import OmegaConf

        return [str(o) for o in OmegaConf.load(sweep_dir / "multirun.yaml").hydra.overrides.task]
    except Exception:
        return None


def resume_command(prog: str) -> str:
    """The command that resumes this run: its own overrides with its run directory, or in a multirun
    the sweep's overrides with its sweep directory (finished jobs are skipped, see `finished_run`)."""
    import shlex

    hc = _hydra_config()
    if hc is None:
        return "the same call"
    from hydra.types import RunMode

    flags = [f"--config-dir={str(s.path).removeprefix('file://')}" for s in hc.runtime.config_sources if s.provider == "command-line"]
    job_dir = sweep_dir = Path(hc.runtime.output_dir)
    for _ in Path(str(hc.sweep.subdir)).parts if hc.mode == RunMode.MULTIRUN else ():
        sweep_dir = sweep_dir.parent  # the job's directory is <sweep dir>/<subdir>
    sweep = _sweep_overrides(sweep_dir) if hc.mode == RunMode.MULTIRUN else None
    if sweep is not None:
        flags, overrides, key, where = ["-m", *flags], sweep, "hydra.sweep.dir", sweep_dir
    else:
        overrides, key, where = [str(o) for o in hc.overrides.task], "hydra.run.dir", job_dir
    # its run directory, and resume on (`resume=false` would start the run's training afresh)
    overrides = [o for o in overrides if not o.startswith(f"{key}=") and o.split("=")[0].lstrip("+~") != "resume"] + [f"{key}={where}"]
    return " ".join([prog, *flags, *(shlex.quote(o) for o in overrides)])


def _to_log_files(level: int, message: str) -> None:
    """A record for the log files only (`<task>.log`): the console gets the line once, on stderr."""
    record = log.makeRecord(log.name, level, __file__, 0, message, (), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def interrupted(prog: str, exc: signals.Interrupted) -> None:
    """The one line of a run stopped by a signal (stderr, the log file, a multirun job's error.txt),
    then exit 128 + the signal's number."""
    from advlab.utils.io import write_text

    doing = exc.during
    line = (f"{prog}: interrupted by {signals.name(exc.signum)}{f' while {doing}' if doing else ''}; its completed epochs and crafted batches are saved. "
            f"Resume with the same command: {resume_command(prog)}")
    job_dir = _multirun_job_dir()
    if job_dir is not None:
        write_text(job_dir / ERROR_FILE, line + "\n\n" + "".join(traceback.format_exception(exc)))
    _to_log_files(logging.WARNING, line)
    print(line, file=sys.stderr, flush=True)
    raise SystemExit(exc.exit_code)


def _failed(prog: str, exc: Exception) -> None:
    err = config_error_in(exc)
    job_dir = _multirun_job_dir()
    if job_dir is not None:  # one job of a sweep: record it, let the others run
        log.exception("Job failed (recorded in %s; the sweep goes on)", job_dir / ERROR_FILE)
        record_failure(job_dir, err or exc)
        return
    if err is None:
        log.exception("Run failed")
        raise exc
    log.error("Bad input: %s", err)
    fail_with(prog, err)


def task_wrapper(task):
    @functools.wraps(task)
    def wrapped(cfg):
        from advlab.utils.quiet import silence_third_party

        silence_third_party()
        prog = f"advlab-{cfg.get('task_name', 'train')}"
        failed = True
        try:
            with signals.handled():
                result = task(cfg)
            failed = False
            job_dir = _multirun_job_dir()
            if job_dir is not None:  # a re-run of a failed job that now succeeds
                (job_dir / ERROR_FILE).unlink(missing_ok=True)
            return result
        except BaseException as exc:
            if isinstance(exc, signals.Interrupted):
                interrupted(prog, exc)
            if not isinstance(exc, Exception):
                raise
            _failed(prog, exc)
            return None
        finally:
            close_wandb(failed)

    return wrapped
