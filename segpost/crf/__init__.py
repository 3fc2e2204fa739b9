"""Fully connected CRFs with Gaussian edge potentials (Krähenbühl & Koltun 2011)."""
from .model import DenseCRF
from .refine import CRFParams, crf_refine

__all__ = ["CRFParams", "DenseCRF", "crf_refine"]
