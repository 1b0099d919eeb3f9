"""advlab-eval's robust-accuracy table (advlab.analysis.robustness_table): one row per model, clean and each
attack at each ε > 0; the attack's own curve where exact (`alone`), else the worst case, and it says which."""
from __future__ import annotations

import pytest

from advlab.analysis.robustness_table import table

EPS = [0.0, 8 / 255]


def _curve(mean, alone):
    return {"norm": "linf", "eps": list(EPS), "mean": mean, "sem": [0.0, 0.0], "alone_mean": alone}


def test_rows_hold_clean_and_each_attacks_own_figure_when_exact():
    summary = {
        "pgd_at": {"robustness": {"pgd": _curve([0.6, 0.30], [0.6, 0.32]), "aa": _curve([0.6, 0.25], [0.6, 0.27])}},
        "standard": {"robustness": {"pgd": _curve([0.9, 0.0], [0.9, 0.01]), "aa": _curve([0.9, 0.0], [0.9, 0.0])}},
    }
    header, rows = table(summary)
    assert header == ["model", "clean", f"pgd@{8 / 255:.4g}", f"aa@{8 / 255:.4g}", "source"]
    assert rows[0] == ["pgd_at", 0.6, 0.32, 0.27, "alone"]
    assert rows[1] == ["standard", 0.9, 0.01, 0.0, "alone"]


def test_without_exact_curves_the_worst_case_is_reported_and_labelled():
    summary = {"m": {"robustness": {"pgd": _curve([0.7, 0.2], None), "aa": _curve([0.7, 0.1], [0.7, 0.15])}}}
    header, rows = table(summary)
    assert rows == [["m", 0.7, 0.2, 0.1, "robust"]]  # one attack without its own curve: the whole row is the worst case


def test_attacks_on_other_grids_leave_gaps_and_models_without_curves_are_skipped():
    summary = {
        "a": {"robustness": {"pgd": {"norm": "linf", "eps": [0.0, 0.1, 0.2], "mean": [1.0, 0.5, 0.2], "sem": [0] * 3,
                                     "alone_mean": [1.0, 0.5, 0.25]}}},
        "b": {"robustness": {"fgsm": _curve([0.8, 0.4], [0.8, 0.4])}},
        "c": {},
    }
    header, rows = table(summary)
    assert header[2:-1] == ["pgd@0.1", "pgd@0.2", f"fgsm@{8 / 255:.4g}"]
    assert rows[0] == ["a", 1.0, 0.5, 0.25, None, "alone"]
    assert rows[1] == ["b", 0.8, None, None, 0.4, "alone"] and len(rows) == 2
    assert rows[1][1] == pytest.approx(0.8)
