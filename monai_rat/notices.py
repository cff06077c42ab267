"""Silence the harmless third-party notices that monai-rat's own code paths trigger, and nothing else.

Importing ``monai_rat`` calls :func:`quiet_third_party_notices` once. It hides exactly these messages,
each matched by its text and the module that emits it:

- MONAI's ``nvImageCodec is not available; skipping pydicom decoder plugin registration.`` (a log
  record of ``monai.data.nvimgcodec_pydicom_plugin``) and the ``UserWarning``
  ``NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully ...`` from
  ``monai.data.image_reader`` that follows it. Every ``LoadImage`` built without a reader constructs
  MONAI's optional GPU DICOM decoder; without the ``nvidia-nvimgcodec`` package it says so twice and
  falls back to pydicom and ITK, which is what monai-rat uses anyway.

Set ``MONAI_RAT_SHOW_ALL_WARNINGS=1`` to keep every message. Other warnings are never touched. The
test suite filters the same messages (and a few that only tests trigger) in ``setup.cfg``.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

__all__ = ["quiet_third_party_notices", "SHOW_ALL_ENV", "NVIMGCODEC_LOGGER", "NVIMGCODEC_LOG", "NVIMGCODEC_WARNING"]

#: environment variable that turns the filters off
SHOW_ALL_ENV = "MONAI_RAT_SHOW_ALL_WARNINGS"
#: the logger and the start of the log message MONAI writes when nvImageCodec is missing
NVIMGCODEC_LOGGER = "monai.data.nvimgcodec_pydicom_plugin"
NVIMGCODEC_LOG = "nvImageCodec is not available; skipping pydicom decoder plugin registration"
#: the start of the warning MONAI's NvImgCodecPydicomReader issues right after it
NVIMGCODEC_WARNING = "NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully"


class _DropMessage(logging.Filter):
    """Drop the records of one logger whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefix)


def quiet_third_party_notices() -> bool:
    """Install the filters described in the module docstring (once per process).

    Returns:
        True when the filters are in place, False when ``MONAI_RAT_SHOW_ALL_WARNINGS`` is set.

    Raises:
        nothing.
    """
    if os.environ.get(SHOW_ALL_ENV, "").strip().lower() not in ("", "0", "false", "no"):
        return False
    log = logging.getLogger(NVIMGCODEC_LOGGER)
    if not any(isinstance(f, _DropMessage) and f.prefix == NVIMGCODEC_LOG for f in log.filters):
        log.addFilter(_DropMessage(NVIMGCODEC_LOG))
    warnings.filterwarnings(
        "ignore", message=re.escape(NVIMGCODEC_WARNING), category=UserWarning, module=r"monai\.data\.image_reader"
    )
    return True
