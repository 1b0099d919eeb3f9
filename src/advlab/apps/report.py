"""advlab-report: the tables and figures of a Hydra multirun (also run by Hydra at a sweep's end).

    advlab-report outputs/transfer/multiruns/2026-11-22/10-00-00-000000
    advlab-report --reproductions docs/reproductions.yaml outputs/     # the paper-vs-advlab table
    advlab-report --reproductions docs/reproductions.yaml outputs/ benchmarks/results/reproductions \
        --keep benchmarks/results/reproductions                          # ... and keep the runs it reads

Writes into <sweep dir>/report/: `transfer_matrix.csv` (or `perturbation_matrix.csv`; rows source,
columns target, mean ± std over seeds, long format), `report.md` (the matrices as Markdown tables,
a summary of every configuration, and the jobs that failed or are missing), `heatmap_<metric>.png`,
for perturbation-learning sweeps that measured transfer `ilyas_scatter.png`, for sweeps naming
`report_best_of` keys each metric's best grid point on its own (`best_of.csv`), `summary.csv` and
`jobs.csv`; and logs them to one W&B run (job type `report`) in the sweep's W&B group.

With `--reproductions CLAIMS`, the directories are searched for finished runs and the reproduction
table (each paper's headline numbers against advlab's, advlab.report.reproductions) is written to
`--out` (default docs/REPRODUCTIONS.md).
"""
from __future__ import annotations

import argparse
import logging
import sys

from advlab.errors import ConfigError
from advlab.report.reproductions import write_reproductions
from advlab.report.sweep_report import write_report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="advlab-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", metavar="sweep_dir",
                        help="a Hydra multirun directory (outputs/<task>/multiruns/<date>/<time>); with "
                             "--reproductions, any number of directories holding runs")
    parser.add_argument("--out", default=None, help="output directory (default: <sweep_dir>/report); with "
                                                    "--reproductions, the page (default: docs/REPRODUCTIONS.md)")
    parser.add_argument("--wandb", default="auto", choices=("auto", "offline", "online", "off"),
                        help="auto: as the jobs' logger config says (offline unless they were online)")
    parser.add_argument("--reproductions", default=None, metavar="CLAIMS",
                        help="the claims file (docs/reproductions.yaml): write the paper-vs-advlab table")
    parser.add_argument("--machine", default=None, help="with --reproductions: the machine runs without a machine.json "
                                                        "ran on (default: this one, from /proc/cpuinfo)")
    parser.add_argument("--keep", default=None, metavar="DIR",
                        help="with --reproductions: copy the runs the table reads into DIR (their metrics.json, "
                             "machine.json, configs), so the table can be regenerated from DIR alone")
    return parser


def _reproductions(args) -> int:
    out = args.out or "docs/REPRODUCTIONS.md"
    missing = write_reproductions(args.reproductions, args.dirs, out, args.machine, args.keep)
    print(out)
    for claim in missing:
        print(f"advlab-report: not measured (no finished run of its command): {claim}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.reproductions is None and len(args.dirs) != 1:
        parser.error("one sweep_dir (several directories only with --reproductions)")
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        if args.reproductions is not None:
            return _reproductions(args)
        report = write_report(args.dirs[0], args.out, args.wandb)
    except ConfigError as err:
        print(f"advlab-report: error: {err}", file=sys.stderr)
        return 2
    print(report.out_dir / "report.md")
    if report.failed:
        print(f"advlab-report: {report.failures()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
