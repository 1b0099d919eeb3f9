"""The robust-accuracy table of an advlab-eval run: one row per model, clean accuracy and each attack's
accuracy at each ε > 0 of its grid — the figure a defence comparison reports (clean / PGD-20 /
AutoAttack). An attack's figure is its own curve (`alone`: the attack by itself on every evaluated point,
exact with `robustness.diagnostics=true`) where that is known, else the robustness curve's worst case
(`robust`), and the `source` column says which."""
from __future__ import annotations


def table(summary: dict) -> tuple[list[str], list[list]]:
    """(header, rows) from advlab-eval's per-model summary ({model: {"robustness": {attack: curve}}}).

    Columns: model, clean, then `<attack>@<ε>` (mean over members) for every attack and ε > 0, then
    `source` (alone | robust). Clean is the curves' ε = 0 point: the accuracy on the evaluated points."""
    columns: list[tuple[str, float]] = []
    for s in summary.values():
        for attack, curve in s.get("robustness", {}).items():
            columns += [(attack, e) for e in curve["eps"] if e > 0 and (attack, e) not in columns]
    header = ["model", "clean"] + [f"{attack}@{e:.4g}" for attack, e in columns] + ["source"]
    rows = []
    for name, s in summary.items():
        curves = s.get("robustness", {})
        if not curves:
            continue
        exact = all(c.get("alone_mean") is not None for c in curves.values())
        row: list = [name, _clean(curves)]
        for attack, e in columns:
            curve = curves.get(attack)
            values = None if curve is None else (curve["alone_mean"] if exact else curve["mean"])
            row.append(None if curve is None or e not in curve["eps"] else float(values[curve["eps"].index(e)]))
        rows.append(row + ["alone" if exact else "robust"])
    return header, rows


def _clean(curves: dict) -> float | None:
    for curve in curves.values():
        if 0.0 in curve["eps"]:
            return float(curve["mean"][curve["eps"].index(0.0)])
    return None
