"""Distil a reasoning teacher's safety reasoning into a student.  `python train.py --help`"""

from lightning_da.cli import train

if __name__ == "__main__":
    train()
