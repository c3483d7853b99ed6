"""The paper's tables and per-layer figure from evaluate.py runs.  `python report.py --help`

    python report.py outputs/evaluate/multiruns/<time>            # every results.json under it
    python report.py runs/a runs/b --out paper/ --wandb-project lightning_da
"""

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from lightning_da.aggregate import find_configurations, log_to_wandb, write_report  # noqa: E402
from lightning_da.errors import UserError  # noqa: E402
from lightning_da.stats import RESAMPLES  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Aggregate evaluate.py runs: report.md, table.csv, configurations.csv, "
                                                 "asr_by_layer.png")
    parser.add_argument("dirs", nargs="+", help="evaluate.py run or multirun directories (searched for results.json)")
    parser.add_argument("--out", type=Path, help="where to write (default: the first directory)")
    parser.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples")
    parser.add_argument("--wandb-project", help="also log the tables and figure as W&B artifacts to this project")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.resamples < 1:
            raise UserError(f"--resamples={args.resamples}: set it to an integer of at least 1")
        configurations = find_configurations(args.dirs)
        out = args.out or Path(args.dirs[0])
        files = write_report(configurations, out, seed=args.seed, resamples=args.resamples)
        if args.wandb_project:
            log_to_wandb(files, args.wandb_project, out)
    except UserError as exc:
        logging.getLogger("report").error("error: %s", exc)
        sys.exit(2)
    print(files["report"].read_text().split("\n![")[0])
    print("written:", ", ".join(str(p) for p in files.values()))


if __name__ == "__main__":
    main()
