"""The one error type for bad user input (reported as a single line, before any work starts), the
one number checker every constructor and the pre-flight use, and the one way a moved key keeps working
for a release (`moved_keys`: its value taken to its new place, with one line naming the new form)."""
from __future__ import annotations

import math
import numbers


class ConfigError(ValueError):
    """Bad user input. `key` names the config key (a constructor: its parameter; the pre-flight adds the
    node path with `under`), `message` what is wrong and what is allowed, on one line."""

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")

    def under(self, node: str, owner: str = "") -> ConfigError:
        """This error at config node `node`: a bare parameter (`steps`, as constructors name it) is
        prefixed (`eval_attack.steps`); a key named as at its owner's node (`attack.steps` with owner
        `attack`) is re-rooted there; any other dotted key (`eps.value`) names a key of its own."""
        key = self.key
        if owner and (key == owner or key.startswith(owner + ".")):
            key = node + key[len(owner):]
        elif node and key != node and not key.startswith(node + ".") and (not owner or "." not in key):
            key = f"{node}.{key}"
        return ConfigError(key, self.message)


def check_number(key: str, value, minimum: float | None = None, *, integer: bool = False, strict: bool = False,
                 allow_none: bool = False):
    """A numeric setting: a finite number (an integer, also written 64.0, with `integer`) >= `minimum`
    (> with `strict`), or None with `allow_none`; else a ConfigError naming `key`. Returns the value as
    int / float (None stays None)."""
    if value is None and allow_none:
        return None
    is_real = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    ok = is_real and (not integer or float(value).is_integer())
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        kind = "an integer" if integer else "a finite number"
        bound = f" {'>' if strict else '>='} {minimum}" if minimum is not None else ""
        raise ConfigError(key, f"must be {'null or ' if allow_none else ''}{kind}{bound}, got {value!r}")
    return int(value) if integer else float(value)


def moved_keys(values, moves: dict[str, str], old_node: str, new_node: str) -> tuple[dict, list[str]]:
    """Keys that moved (one release): of `values` (a mapping of the old node's keys), those named in
    `moves` (old key -> new key) and set (not None). Returns ({new key: value}, one deprecation line per
    key: `<old_node>.<old> is deprecated: use <new_node>.<new>=<value>`); an empty node is the top level."""
    def dotted(node: str, key: str) -> str:
        return f"{node}.{key}" if node else key

    moved = {old: value for old, value in values.items() if old in moves and value is not None}
    notes = [f"{dotted(old_node, old)} is deprecated: use {dotted(new_node, moves[old])}={value}" for old, value in moved.items()]
    return {moves[old]: value for old, value in moved.items()}, notes
