from lightning_da.callbacks.bon_attribution import BoNAttributionCallback

__all__ = ["BoNAttributionCallback"]
