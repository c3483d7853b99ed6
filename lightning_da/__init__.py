"""lightning_da: deliberative alignment of language models on Lightning and Hydra."""

__version__ = "0.1.0"
