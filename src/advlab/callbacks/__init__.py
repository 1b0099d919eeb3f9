"""Lightning callbacks of advlab runs (enabled from the `callbacks` config group)."""
from advlab.callbacks.mutual_information import MutualInformation

__all__ = ["MutualInformation"]
