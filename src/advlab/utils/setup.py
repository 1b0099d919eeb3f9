"""The first steps of every advlab task: the data (checked before any work), the artifact cache and the seed."""
from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig


def data_and_cache(cfg: DictConfig):
    """(datamodule set up, artifact cache, input bounds as a list or None). The datamodule is checked
    first, so missing data is a one-line error before any work; the seed is set before the setup."""
    import pytorch_lightning as pl

    from advlab.cache import ArtifactCache

    datamodule = instantiate(cfg.dataset)
    datamodule.check()
    cache = ArtifactCache(cfg.paths.cache_dir)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    datamodule.setup()
    bounds = list(datamodule.bounds) if datamodule.bounds is not None else None
    return datamodule, cache, bounds
