"""monai-rat: the Region Attention Transformer (RAT) for medical image restoration, for MONAI."""

from .notices import quiet_third_party_notices

__version__ = "0.1.0"

quiet_third_party_notices()  # only MONAI's "nvImageCodec is not available" pair; see monai_rat/notices.py


def _install_bundle_error_hook() -> None:
    # a bundle config's `$import monai_rat` under `python -m monai.bundle`: a failing command ends on its reason
    from monai_rat import bundle_errors

    if bundle_errors.running_monai_bundle():
        bundle_errors.install()


_install_bundle_error_hook()
