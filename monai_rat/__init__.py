"""monai-rat: the Region Attention Transformer (RAT) for medical image restoration, for MONAI."""

__version__ = "0.1.0"
