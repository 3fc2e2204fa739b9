"""Fully connected CRFs with Gaussian edge potentials (Krähenbühl & Koltun 2011)."""
from .model import DenseCRF
from .refine import CRFParams, crf_refine  # imports .device, whose DeviceDenseCRF takes DenseCRF(device unary)

__all__ = ["CRFParams", "DenseCRF", "crf_refine"]
