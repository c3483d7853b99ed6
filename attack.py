"""PAIR against the deployed targets (the paper's Table 4).  `python attack.py adapter=<sft run>/adapter`  (`--help`)"""

from lightning_da.cli import attack

if __name__ == "__main__":
    attack()
