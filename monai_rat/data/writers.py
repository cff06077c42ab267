"""MONAI image writers that write atomically: a killed or failing write never leaves a partial output file.

MONAI's ``NibabelWriter`` / ``PILWriter`` / ``ITKWriter`` write straight to the output name, so a
process killed (or a disk filling up) during inference leaves a truncated ``<name>_rat.nii.gz`` that
looks like a result. These subclasses write to a temporary file in the same folder (with the same
suffix, so the format is chosen as before) and rename it over the output name when it is complete
(:func:`monai_rat.utils.atomic_write`). The bundles' inference configs pass them to ``SaveImaged``
(``"writer": "$monai_rat.data.AtomicNibabelWriter"``).
"""

from __future__ import annotations

import logging
from typing import Any

from monai.data import ITKWriter, NibabelWriter, PILWriter

from monai_rat.utils import atomic_write

__all__ = ["AtomicITKWriter", "AtomicNibabelWriter", "AtomicPILWriter"]

logger = logging.getLogger(__name__)


class _AtomicWrite:
    def write(self, filename: Any, verbose: bool = False, **kwargs: Any) -> None:
        """Write to a temporary file next to ``filename``, then rename it to ``filename``.

        Args:
            filename: the output file.
            verbose: log the write.
            kwargs: the writer's own ``write`` arguments.

        Raises:
            OSError: when the folder cannot be written (``filename`` is left as it was).
        """
        with atomic_write(filename, "wb") as f:
            super().write(f.name, verbose=False, **kwargs)  # type: ignore[misc]
        if verbose:
            logger.info(f"wrote {filename}")


class AtomicNibabelWriter(_AtomicWrite, NibabelWriter):
    """MONAI's ``NibabelWriter`` (NIfTI), writing atomically (see the module docstring)."""


class AtomicPILWriter(_AtomicWrite, PILWriter):
    """MONAI's ``PILWriter`` (PNG, JPEG ...), writing atomically (see the module docstring)."""


class AtomicITKWriter(_AtomicWrite, ITKWriter):
    """MONAI's ``ITKWriter`` (NIfTI, NRRD, MetaImage ...), writing atomically (see the module docstring)."""
