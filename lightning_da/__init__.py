"""lightning_da: deliberative alignment of language models on Lightning and Hydra."""

__version__ = "0.1.0"
__all__ = ["LatentBestOfN", "LatentPick"]


def __getattr__(name: str):
    """`from lightning_da import LatentBestOfN` without importing torch for `import lightning_da`."""
    if name in __all__:
        from lightning_da import latent_best_of_n

        return getattr(latent_best_of_n, name)
    raise AttributeError(f"module 'lightning_da' has no attribute {name!r}")
