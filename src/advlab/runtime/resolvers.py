"""Where advlab's configs live and the resolvers its YAML uses (`${advlab.root:}`, `${advlab.choice:...}`,
`${advlab.run_group:...}`, `${advlab.wandb_offline:}`). Imported by every app before Hydra composes."""
from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf


def conf_dir() -> Path:
    """`conf/` shipped inside the wheel, or the repository's top-level `conf/` (editable install)."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "conf", package.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"advlab's conf/ directory not found next to {package}")

CONF_DIR = conf_dir()

if not OmegaConf.has_resolver("advlab.wandb_offline"):
    # W&B is offline unless the user opts in (logger.offline=false, or WANDB_MODE=online).
    OmegaConf.register_new_resolver("advlab.wandb_offline", lambda: os.environ.get("WANDB_MODE", "offline").lower() not in ("online", "run"))


def run_group(name: str) -> str:
    """W&B group of a run: `name` alone, or `name-<date>_<time>` of its sweep in a Hydra multirun."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:
            sweep_dir = Path(hydra_cfg.sweep.dir)
            return f"{name}-{sweep_dir.parent.name}_{sweep_dir.name}"
    except Exception:  # not inside a Hydra job (compose API, tests)
        pass
    return name


def choice(group: str) -> str | None:
    """The option chosen for a defaults-list entry, also one at a package (`arch@source.arch`), which
    `${hydra:runtime.choices...}` cannot address (its key contains a dot)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices.get(group)
    except Exception:
        return None


def root_dir() -> str:
    return str(Path(os.environ.get("ADVLAB_ROOT") or os.getcwd()).resolve())


if not OmegaConf.has_resolver("advlab.run_group"):
    OmegaConf.register_new_resolver("advlab.root", root_dir)
    OmegaConf.register_new_resolver("advlab.run_group", run_group)
    OmegaConf.register_new_resolver("advlab.choice", choice)


def group_options(group: str, extra_dir: str | os.PathLike | None = None) -> list[str]:
    """The options of a config group: conf/<group>/*.yaml, and those of a --config-dir (`extra_dir`)."""
    folders = [CONF_DIR / group] + ([Path(extra_dir) / group] if extra_dir else [])
    return sorted({p.stem for folder in folders if folder.is_dir() for p in folder.glob("*.yaml")})


GROUPS = ("dataset", "arch", "method", "derived", "attack", "eps", "trainer", "callbacks", "logger", "paths", "experiment", "spec", "sweep",
          "hparams_search", "debug",
          "scheduler", "optimizer")
