"""Distil a reasoning teacher's safety reasoning into a student.  `python train.py --help`"""

from lightning_da.runs.train import main

if __name__ == "__main__":
    main()
