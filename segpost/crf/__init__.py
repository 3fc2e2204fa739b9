from .model import DenseCRF

__all__ = ["DenseCRF"]
