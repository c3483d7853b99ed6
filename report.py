"""The paper's tables and per-layer figure from evaluate.py runs.  `python report.py --help`"""

from lightning_da.runs.report import main

if __name__ == "__main__":
    main()
