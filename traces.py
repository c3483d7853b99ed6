"""The teacher stage alone: a slice of the teacher's traces, then the judge's filter.  `python traces.py --help`"""

from lightning_da.cli import traces

if __name__ == "__main__":
    traces()
