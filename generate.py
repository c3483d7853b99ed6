"""Latent Best-of-N generation: N candidates per prompt, the one least like the base kept.  `python generate.py --help`"""

from lightning_da.cli import generate

if __name__ == "__main__":
    generate()
