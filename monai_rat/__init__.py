"""monai-rat: the Region Attention Transformer (RAT) for medical image restoration, for MONAI."""

from .notices import quiet_third_party_notices

__version__ = "0.1.0"

quiet_third_party_notices()  # only MONAI's "nvImageCodec is not available" pair; see monai_rat/notices.py
