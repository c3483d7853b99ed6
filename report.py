"""The paper's tables and per-layer figure from evaluate.py runs.  `python report.py --help`"""

from lightning_da.cli import report

if __name__ == "__main__":
    report()
