"""Latent Best-of-N generation: N candidates per prompt, the one least like the base kept.  `python generate.py --help`"""

from lightning_da.runs.generate import main

if __name__ == "__main__":
    main()
