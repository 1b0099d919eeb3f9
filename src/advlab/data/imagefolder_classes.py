"""Which class folders of an image-folder tree become which classes: ``class_subset`` and ``class_groups``.

A selection item names class folders in one of three ways: a folder name (``n01440764``), an index
into the sorted folder list (``3``: for ImageNet the sorted wnid folders are the standard 0..999
class indices) or an inclusive index range ``[first, last]`` (``[151, 268]``, as MadryLab's robustness
library writes Restricted ImageNet's ranges). ``class_subset`` keeps the folders it names, each its
own class, labels in the order given; ``class_groups`` maps each new class name to its items, labels
in the mapping's order, and a folder may belong to one group only. A range is a pair inside the item
list (``dog: [[151, 268]]``); ``dog: [151, 268]`` is the two folders 151 and 268. An int is always an
index: folder names that are numbers are written quoted (``'7'``).

The items' form is checked when the datamodule is built (``parse_*``); whether the folders exist,
indices lie in range and groups overlap, once the folder list is read (``resolve_classes``).
"""
from __future__ import annotations

import numbers
from typing import Any, Optional, Union

from omegaconf import OmegaConf

from advlab.errors import ConfigError

Item = Union[str, int, tuple[int, int]]
ITEM_FORMS = "class folder names, indices into the sorted folder list, or inclusive [first, last] index ranges"
SHOWN = 5  # folder names quoted in an error


def plain(value: Any) -> Any:
    """A Hydra node (DictConfig / ListConfig) as plain Python, anything else unchanged."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def parse_item(key: str, item: Any) -> Item:
    if isinstance(item, str) and item:
        return item
    if _is_int(item) and item >= 0:
        return int(item)
    if isinstance(item, (list, tuple)) and len(item) == 2 and all(_is_int(v) and v >= 0 for v in item) and item[0] <= item[1]:
        return int(item[0]), int(item[1])
    raise ConfigError(key, f"{item!r} is not a selection item; allowed: {ITEM_FORMS} (e.g. n01440764, 3, [151, 268])")


def parse_items(key: str, value: Any) -> list[Item]:
    value = plain(value)
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ConfigError(key, f"is empty; give a list of {ITEM_FORMS}")
    return [parse_item(key, item) for item in items]


def parse_subset(value: Any) -> Optional[list[Item]]:
    """``class_subset`` as a list of items, or None."""
    if value is None:
        return None
    value = plain(value)
    if not isinstance(value, (list, tuple)):
        raise ConfigError("dataset.class_subset", f"must be null or a list of {ITEM_FORMS}, e.g. [n01440764, n02102040]; got {value!r}")
    return parse_items("dataset.class_subset", value)


def parse_groups(value: Any) -> Optional[dict[str, list[Item]]]:
    """``class_groups`` as {class name: items}, or None."""
    if value is None:
        return None
    value = plain(value)
    if not isinstance(value, dict) or not value:
        raise ConfigError("dataset.class_groups", f"must be null or a mapping class name -> list of {ITEM_FORMS}, "
                                                  f"e.g. {{dog: [[151, 268]], cat: [[281, 285]]}}; got {value!r}")
    return {str(name): parse_items(f"dataset.class_groups.{name}", items) for name, items in value.items()}


def _expand(items: list[Item], folders: list[str], key: str, where: str) -> list[str]:
    """The folder names ``items`` denote; one ConfigError names every missing folder and bad index."""
    index = {name: i for i, name in enumerate(folders)}
    chosen: list[str] = []
    missing: list[str] = []
    out_of_range: list[str] = []
    for item in items:
        if isinstance(item, str):
            (chosen.append(item) if item in index else missing.append(item))
            continue
        first, last = (item, item) if isinstance(item, int) else item
        if last >= len(folders):
            out_of_range.append(str(item if isinstance(item, int) else list(item)))
            continue
        chosen.extend(folders[first:last + 1])
    if missing:
        shown = ", ".join(folders[:SHOWN]) + (", ..." if len(folders) > SHOWN else "")
        raise ConfigError(key, f"no class folder {', '.join(missing)} under {where}; it holds {len(folders)}: {shown}")
    if out_of_range:
        raise ConfigError(key, f"index {', '.join(out_of_range)} outside 0..{len(folders) - 1}, the sorted class folders of {where}")
    return chosen


def resolve_classes(folders: list[str], subset: Optional[list[Item]], groups: Optional[dict[str, list[Item]]],
                    where: str) -> tuple[list[str], dict[str, int]]:
    """(class names, {folder name: label}) of the selection over ``folders`` (the sorted class folders
    of ``where``, the training folder); every folder when nothing is selected."""
    if groups is not None:
        owner: dict[str, str] = {}
        mapping: dict[str, int] = {}
        for label, (name, items) in enumerate(groups.items()):
            for folder in _expand(items, folders, f"dataset.class_groups.{name}", where):
                if folder in owner and owner[folder] != name:
                    raise ConfigError("dataset.class_groups", f"{folder} is in both {owner[folder]} and {name}; a folder belongs to one group only")
                owner[folder] = name
                mapping[folder] = label
        names = list(groups)
    else:
        chosen = folders if subset is None else _expand(subset, folders, "dataset.class_subset", where)
        twice = sorted({f for f in chosen if chosen.count(f) > 1})
        if twice:
            raise ConfigError("dataset.class_subset", f"names {', '.join(twice)} more than once (by name or index)")
        names, mapping = list(chosen), {folder: label for label, folder in enumerate(chosen)}
    if len(names) < 2:  # a classifier of one class learns nothing (and its attacks have no other class)
        key = "dataset.class_groups" if groups is not None else "dataset.class_subset" if subset is not None else "dataset.root"
        raise ConfigError(key, f"selects {len(names)} class ({', '.join(names) or 'none'}) of {where}; at least 2 are needed")
    return names, mapping


def planned_class_count(subset: Optional[list[Item]], groups: Optional[dict[str, list[Item]]]) -> Optional[int]:
    """The number of classes the selection makes, where it is known without the folder list."""
    if groups is not None:
        return len(groups)
    if subset is None:
        return None
    return sum(1 if not isinstance(item, tuple) else item[1] - item[0] + 1 for item in subset)
