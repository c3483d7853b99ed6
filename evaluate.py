"""Best-of-N latent attribution on a benchmark, every selector side by side.  `python evaluate.py --help`"""

from lightning_da.runs.evaluate import main

if __name__ == "__main__":
    main()
