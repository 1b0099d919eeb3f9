"""The pre-flight: a command line's every job composed and checked before any work (jobs), what the
overrides say (overrides), every `_target_` node built or matched to its constructor (objects)."""
