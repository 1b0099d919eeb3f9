"""Lightning callbacks of advlab runs (enabled from the `callbacks` config group)."""
from advlab.callbacks.mutual_information import MutualInformation
from advlab.callbacks.overfitting_guard import OverfittingGuard

__all__ = ["MutualInformation", "OverfittingGuard"]
