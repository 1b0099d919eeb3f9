"""advlab-report: the tables and figures of a Hydra multirun (also run by Hydra at a sweep's end).

    advlab-report outputs/transfer/multiruns/2026-11-22/10-00-00-000000

Writes into <sweep dir>/report/: `transfer_matrix.csv` (or `perturbation_matrix.csv`; rows source,
columns target, mean ± std over seeds, long format), `report.md` (the matrices as Markdown tables,
a summary of every configuration, and the jobs that failed or are missing), `heatmap_<metric>.png`,
for perturbation-learning sweeps that measured transfer `ilyas_scatter.png`, `summary.csv` and
`jobs.csv`; and logs them to one W&B run (job type `report`) in the sweep's W&B group.
"""
from __future__ import annotations

import argparse
import logging
import sys

from advlab.errors import ConfigError
from advlab.report.sweep_report import write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advlab-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", help="a Hydra multirun directory (outputs/<task>/multiruns/<date>/<time>)")
    parser.add_argument("--out", default=None, help="output directory (default: <sweep_dir>/report)")
    parser.add_argument("--wandb", default="auto", choices=("auto", "offline", "online", "off"),
                        help="auto: as the jobs' logger config says (offline unless they were online)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        report = write_report(args.sweep_dir, args.out, args.wandb)
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
