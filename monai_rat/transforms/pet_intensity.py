"""PET intensity normalisation: SUV when the data says how, a fixed activity scale otherwise; invertible.

The network sees ``value * factor`` where

- **SUV** (when the injected dose and the body weight are known): ``factor = W / (D * suv_scale)``
  with the image in Bq/mL, ``W`` the body weight in g and ``D`` the injected activity in Bq,
  decay-corrected to the image's reference time (so ``value * W / D`` is the standardised uptake
  value, tissue density 1 g/mL); ``suv_scale`` (default 10) maps SUV 10 to 1.0;
- **fixed** otherwise: ``factor = 1 / activity_scale`` (the demo data's arbitrary units: 3.0).

Where the dose and weight come from, first found wins:

1. the item's own fields ``injected_dose_bq`` and ``body_weight_kg`` (e.g. from a datalist JSON);
2. a BIDS PET sidecar next to the image, ``<name>.json`` beside ``<name>.nii[.gz]``, with
   ``InjectedRadioactivity`` + ``InjectedRadioactivityUnits`` (Bq, kBq, MBq, GBq, mCi, uCi),
   ``BodyWeight`` (kg) and ``Units`` (the image's unit: Bq/mL, kBq/mL, MBq/mL; Bq/mL if absent). The
   dose is decayed from ``InjectionStart`` to ``ImageDecayCorrectionTime`` (when
   ``ImageDecayCorrected`` is true) or to ``ScanStart`` (when it is false), using the half-life of
   ``TracerRadionuclide`` (or ``RadionuclideHalfLife`` in seconds); with those times missing the image
   is taken as decay-corrected to the injection time, the usual SUV convention.

NIfTI headers themselves carry no dose or weight. Each key's factor comes from its own file's
sidecar (the low- and full-dose files of a pair may differ), falling back to the item's fields.
The factor is recorded with MONAI's invertible-transform machinery, so ``Invertd`` brings a
prediction back to the input's units.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Hashable, Mapping
from functools import lru_cache

from monai.config import KeysCollection
from monai.transforms import InvertibleTransform, MapTransform

__all__ = ["PETIntensityd", "PETIntensityD", "PETIntensityDict", "pet_intensity_factor", "suv_info_from_sidecar", "HALF_LIFE_S"]

logger = logging.getLogger(__name__)

MODES = ("auto", "suv", "fixed")
# half-lives in seconds of common PET radionuclides (NIST / DICOM CID 4020 values)
HALF_LIFE_S = {
    "F18": 6586.2, "C11": 1221.84, "N13": 597.9, "O15": 122.24, "GA68": 4062.6, "CU64": 45723.6,
    "ZR89": 282276.0, "RB82": 76.38, "I124": 360806.4,
}
_DOSE_UNITS = {"bq": 1.0, "kbq": 1e3, "mbq": 1e6, "gbq": 1e9, "mci": 3.7e7, "uci": 3.7e4, "µci": 3.7e4}
_CONC_UNITS = {"bq/ml": 1.0, "bqml": 1.0, "kbq/ml": 1e3, "mbq/ml": 1e6, "bq/cc": 1.0, "kbq/cc": 1e3}


def _nuclide_key(name: str) -> str:
    return "".join(ch for ch in str(name).upper() if ch.isalnum()).replace("FDG", "F18")


def sidecar_path(image_path: str | os.PathLike) -> str:
    """The BIDS sidecar of an image: ``<name>.json`` beside ``<name>.nii.gz`` / ``<name>.nii``."""
    p = str(image_path)
    for ext in (".nii.gz", ".nii"):
        if p.endswith(ext):
            return p[: -len(ext)] + ".json"
    return os.path.splitext(p)[0] + ".json"


def suv_info_from_sidecar(sidecar: Mapping, source: str = "<sidecar>") -> dict | None:
    """``{"dose_bq", "weight_kg", "unit_to_bq_ml"}`` from a BIDS PET sidecar, or ``None`` without dose or weight.

    The dose is decay-corrected to the image's reference time as the module docstring says.

    Args:
        sidecar: the parsed JSON.
        source: the file name, for messages.

    Raises:
        ValueError: for an unknown unit or radionuclide when decay correction needs it, or a value <= 0.
    """
    dose, weight = sidecar.get("InjectedRadioactivity"), sidecar.get("BodyWeight")
    if dose is None or weight is None:
        return None
    unit = str(sidecar.get("InjectedRadioactivityUnits", "MBq")).strip().lower()
    conc = str(sidecar.get("Units", "Bq/mL")).strip().lower()
    if unit not in _DOSE_UNITS:
        raise ValueError(f"{source}: InjectedRadioactivityUnits {unit!r} is not one of {sorted(_DOSE_UNITS)}.")
    if conc not in _CONC_UNITS:
        raise ValueError(f"{source}: Units {conc!r} is not an activity concentration ({sorted(_CONC_UNITS)}); SUV needs one.")
    dose_bq, weight_kg = float(dose) * _DOSE_UNITS[unit], float(weight)
    if not (dose_bq > 0 and weight_kg > 0):
        raise ValueError(f"{source}: InjectedRadioactivity and BodyWeight must be > 0, got {dose!r} {unit}, {weight!r} kg.")
    corrected = sidecar.get("ImageDecayCorrected", True)
    t_ref = sidecar.get("ImageDecayCorrectionTime") if corrected else sidecar.get("ScanStart")
    t_inj = sidecar.get("InjectionStart")
    if t_ref is not None and t_inj is not None and float(t_ref) != float(t_inj):
        half = sidecar.get("RadionuclideHalfLife")
        if half is None:
            nuclide = _nuclide_key(sidecar.get("TracerRadionuclide", ""))
            if nuclide not in HALF_LIFE_S:
                raise ValueError(
                    f"{source}: decay correction from InjectionStart to the image time needs the half-life of "
                    f"TracerRadionuclide {sidecar.get('TracerRadionuclide')!r}; known: {sorted(HALF_LIFE_S)} "
                    "(or give RadionuclideHalfLife in seconds)."
                )
            half = HALF_LIFE_S[nuclide]
        dose_bq *= math.pow(2.0, -(float(t_ref) - float(t_inj)) / float(half))
    return {"dose_bq": dose_bq, "weight_kg": weight_kg, "unit_to_bq_ml": _CONC_UNITS[conc]}


@lru_cache(maxsize=1024)
def _sidecar_info(path: str, mtime: float) -> dict | None:
    try:
        with open(path) as f:
            sidecar = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"PET sidecar {path!r} is not readable JSON ({e}).") from e
    return suv_info_from_sidecar(sidecar, source=path)


def pet_intensity_factor(
    image_path: str | None,
    item: Mapping | None = None,
    mode: str = "auto",
    activity_scale: float = 3.0,
    suv_scale: float = 10.0,
) -> tuple[float, str]:
    """The multiplier that maps an image's values to the network's range, and ``"suv"`` or ``"fixed"``.

    Args:
        image_path: the image file (its sidecar is looked for), or ``None``.
        item: the data item; its ``injected_dose_bq`` and ``body_weight_kg`` fields (Bq/mL images) win.
        mode: ``"auto"`` (SUV when possible), ``"suv"`` (required) or ``"fixed"``.
        activity_scale: the fixed divisor.
        suv_scale: the SUV that maps to 1.0.

    Raises:
        ValueError: with ``mode="suv"`` when neither source gives dose and weight (the file is named), or
            for a malformed sidecar.
    """
    info = None
    if mode != "fixed":
        item = item or {}
        if item.get("injected_dose_bq") is not None and item.get("body_weight_kg") is not None:
            info = {"dose_bq": float(item["injected_dose_bq"]), "weight_kg": float(item["body_weight_kg"]), "unit_to_bq_ml": 1.0}
        elif image_path:
            side = sidecar_path(image_path)
            if os.path.isfile(side):
                info = _sidecar_info(side, os.path.getmtime(side))
        if info is None and mode == "suv":
            raise ValueError(
                f"PETIntensityd(mode='suv'): no injected dose and body weight for {image_path!r}: give the item "
                f"'injected_dose_bq' and 'body_weight_kg', or a BIDS sidecar {sidecar_path(image_path or '<image>')!r} "
                "with InjectedRadioactivity, InjectedRadioactivityUnits and BodyWeight (or use mode='auto' / 'fixed')."
            )
    if info is None:
        return 1.0 / activity_scale, "fixed"
    if info["dose_bq"] <= 0 or info["weight_kg"] <= 0:
        raise ValueError(f"{image_path!r}: injected dose and body weight must be > 0, got {info}.")
    suv_per_unit = info["unit_to_bq_ml"] * info["weight_kg"] * 1000.0 / info["dose_bq"]
    return suv_per_unit / suv_scale, "suv"


class PETIntensityd(MapTransform, InvertibleTransform):
    """Multiply PET images by their normalisation factor (SUV / suv_scale, else 1 / activity_scale); invertible.

    See the module docstring for the sources of dose and weight. The factor is looked up once per
    file (and dose / weight fields) and kept; the mode used is logged then (INFO) and stored with the transform, so ``Invertd`` (or :meth:`inverse`) divides it back out.

    Args:
        keys: the image keys (e.g. "image" and "label").
        mode: ``"auto"`` (default: SUV when dose and weight are known, else fixed), ``"suv"`` (error
            when they are not) or ``"fixed"``.
        activity_scale: the fixed divisor (default 3.0, the demo data's scale).
        suv_scale: the SUV mapped to 1.0 (default 10.0).
        allow_missing_keys: do not raise when a key is missing.

    Raises:
        ValueError: for an unknown ``mode`` or a scale <= 0 (construction), and as
            :func:`pet_intensity_factor` at call time.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mode: str = "auto",
        activity_scale: float = 3.0,
        suv_scale: float = 10.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if mode not in MODES:
            raise ValueError(f"PETIntensityd: `mode` must be one of {MODES}, got {mode!r}.")
        if not (float(activity_scale) > 0 and float(suv_scale) > 0):
            raise ValueError(f"PETIntensityd: activity_scale and suv_scale must be > 0, got {activity_scale!r}, {suv_scale!r}.")
        self.mode = mode
        self.activity_scale = float(activity_scale)
        self.suv_scale = float(suv_scale)
        self._factors: dict = {}  # (file, dose, weight) -> (factor, mode): one lookup and one log line per file

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        """Scale each key by its factor.

        Args:
            data: a dictionary whose keys hold images (MetaTensors name their file in ``filename_or_obj``).
        """
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            path = getattr(img, "meta", {}).get("filename_or_obj") if hasattr(img, "meta") else None
            path = str(path) if path else None
            cache_key = (path, d.get("injected_dose_bq"), d.get("body_weight_kg"))
            if cache_key not in self._factors:
                self._factors[cache_key] = pet_intensity_factor(path, d, self.mode, self.activity_scale, self.suv_scale)
                factor, used = self._factors[cache_key]
                logger.info("PETIntensityd: %s: %s normalisation, factor %.6g.", path or f"<{key}>", used, factor)
            factor, used = self._factors[cache_key]
            d[key] = img * factor
            self.push_transform(d, key, extra_info={"factor": factor, "mode": used})
        return d

    def inverse(self, data: Mapping[Hashable, object]) -> dict:
        """Divide each key by the factor recorded when it was scaled."""
        d = dict(data)
        for key in self.key_iterator(d):
            info = self.pop_transform(d, key)
            d[key] = d[key] / info["extra_info"]["factor"]
        return d


PETIntensityD = PETIntensityDict = PETIntensityd
