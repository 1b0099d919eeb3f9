"""How an advlab app starts: its command line is checked (`advlab.preflight.jobs.precheck`) as Hydra will
read it, then Hydra runs the task; a single run refused once Hydra made its directory leaves none behind."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from advlab.errors import ConfigError
from advlab.preflight.jobs import hydra_flags, precheck
from advlab.runtime.task_wrapper import fail_with


class _MadeDirs:
    """The directories this process makes while a single run starts (os.mkdir audit events; an audit
    hook cannot be removed, so it is installed once and armed per run). The first directory made is
    Hydra's run directory (Hydra makes it, with its parents, before anything else); for it and its
    parents: whether each existed when first tried."""

    installed = False
    armed = False
    first: str | None = None
    existed: dict[str, bool] = {}

    @classmethod
    def arm(cls) -> None:
        if not cls.installed:
            sys.addaudithook(cls._audit)
            cls.installed = True
        cls.first, cls.existed, cls.armed = None, {}, True

    @classmethod
    def _audit(cls, event: str, args) -> None:
        if event != "os.mkdir" or not cls.armed or args[2] not in (None, -1):  # (path, mode, dir_fd)
            return
        path = os.path.abspath(os.fsdecode(args[0]))
        if cls.first is None:
            cls.first = path
        if path == cls.first or cls.first.startswith(path.rstrip(os.sep) + os.sep):
            cls.existed.setdefault(path, os.path.isdir(path))

    @classmethod
    def remove_stub(cls) -> None:
        """A refused run's directory, when this process made it and it holds only what Hydra wrote
        (`.hydra/`, the log): removed, with the parents this process made that are left empty. A run
        that failed once its work began (config_resolved.yaml, checkpoints, ...) keeps its directory,
        and one that existed before (a resumed run's, `hydra.run.dir=.`) is never touched."""
        import shutil

        cls.armed = False
        if cls.first is None or cls.existed.get(cls.first, True):
            return
        run_dir = Path(cls.first)
        stub = run_dir.is_dir() and (run_dir / ".hydra").is_dir() and all(
            p.name == ".hydra" or (p.is_file() and p.suffix == ".log") for p in run_dir.iterdir())
        if not stub:
            return
        shutil.rmtree(run_dir, ignore_errors=True)
        for parent in run_dir.parents:
            if cls.existed.get(str(parent), True):
                break
            try:
                parent.rmdir()  # only when empty: a concurrent run may have made its own directory there
            except OSError:
                break


def run_hydra_app(hydra_entry, prog: str, config_name: str) -> None:
    """Check the command line as Hydra will read it (sys.argv, untouched), then hand over to Hydra. A
    single run refused once Hydra has made its directory (exit 2: data, cache, checkpoint, ...) leaves
    no directory behind (see _MadeDirs.remove_stub); a sweep's jobs keep theirs (error.txt)."""
    # A W&B service inherited from the parent process (its address in WANDB_SERVICE) outlives a killed
    # run and keeps that run's ID "in use", so the resume could never reopen it: each advlab process
    # starts its own service, which ends with the process.
    os.environ.pop("WANDB_SERVICE", None)
    try:
        precheck(sys.argv[1:], config_name)
    except ConfigError as err:
        fail_with(prog, err)
    single = not hydra_flags(sys.argv[1:]).multirun
    if single:
        _MadeDirs.arm()
    try:
        hydra_entry()
    except SystemExit as exit_:
        if single and exit_.code == 2:
            _MadeDirs.remove_stub()
        raise
    finally:
        _MadeDirs.armed = False
