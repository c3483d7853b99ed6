"""Run a whole study, one command per stage.  `python plan.py experiment=paper`  (`--help`)"""

from lightning_da.cli import plan

if __name__ == "__main__":
    plan()
