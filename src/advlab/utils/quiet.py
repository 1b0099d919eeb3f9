"""Third-party start-up noise, silenced once per process (real warnings stay)."""
from __future__ import annotations

import logging
import warnings

# (logger name, text in the message) of lines that tell an advlab user nothing
_LOG_NOISE = (("pytorch_lightning.utilities.rank_zero", "💡 Tip:"),  # adverts for Lightning's cloud products
              ("lightning.pytorch.utilities.rank_zero", "💡 Tip:"))
# warnings about third-party internals or about what advlab does on purpose (resume into a run dir)
_WARNING_NOISE = (r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
                  r"Checkpoint directory .* exists and is not empty.*",
                  r".*does not have many workers which may be a bottleneck.*")


class _DropMatching(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


_done = False


def silence_third_party() -> None:
    global _done
    if _done:
        return
    _done = True
    for name, text in _LOG_NOISE:
        logging.getLogger(name).addFilter(_DropMatching(text))
    for pattern in _WARNING_NOISE:
        warnings.filterwarnings("ignore", message=pattern)
