"""Best-of-N latent attribution on a benchmark, every selector side by side.  `python evaluate.py --help`"""

from lightning_da.cli import evaluate

if __name__ == "__main__":
    evaluate()
