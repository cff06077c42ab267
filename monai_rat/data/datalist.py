"""One entry point for the CT bundle's data: built-in demo, AAPM folder, or a MONAI datalist JSON."""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

__all__ = ["ct_datalist", "load_paired_datalist"]

logger = logging.getLogger(__name__)

_MEMO: dict = {}

_JSON_LAYOUT = """a MONAI datalist JSON like
  {"training":   [{"image": "low/0001.dcm", "label": "full/0001.dcm"}, ...],
   "validation": [{"image": "low/0100.dcm", "label": "full/0100.dcm"}, ...]}
("image" = low dose, "label" = full dose; relative paths are relative to the JSON file's folder)"""


def load_paired_datalist(path: str | os.PathLike) -> dict:
    """Read and check a MONAI datalist JSON of low-dose / full-dose pairs.

    Uses ``monai.data.load_decathlon_datalist`` for the "training" and "validation" keys (relative
    paths are resolved against the JSON file's folder); "test" is read too when present, else it is
    the validation list.

    Args:
        path: the ``.json`` file.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}`` with absolute "image" and "label" paths.

    Raises:
        FileNotFoundError: when the JSON or a file it lists does not exist (the item is named).
        ValueError: when the JSON is not valid, lacks "training" / "validation", or an item lacks
            "image" or "label".
    """
    from monai.data import load_decathlon_datalist

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Datalist JSON {str(path)!r} does not exist; expected {_JSON_LAYOUT}.")
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"Datalist {str(path)!r} is not readable JSON ({e}); expected {_JSON_LAYOUT}.") from e
    if not isinstance(raw, dict):
        raise ValueError(f"Datalist {str(path)!r} holds a {type(raw).__name__}, expected {_JSON_LAYOUT}.")
    missing = [k for k in ("training", "validation") if k not in raw]
    if missing:
        raise ValueError(f"Datalist {str(path)!r} lacks the key(s) {missing} (found {sorted(raw)}); expected {_JSON_LAYOUT}.")
    out = {}
    for split in ("training", "validation", "test"):
        if split not in raw:
            continue
        for i, item in enumerate(raw[split]):
            if not isinstance(item, dict) or "image" not in item or "label" not in item:
                raise ValueError(
                    f"Datalist {str(path)!r}: item {i} of {split!r} must be a dict with 'image' (low dose) and "
                    f"'label' (full dose), got {item!r}."
                )
        items = load_decathlon_datalist(str(path), is_segmentation=True, data_list_key=split, base_dir=str(path.parent))
        for i, item in enumerate(items):
            for key in ("image", "label"):
                if not os.path.exists(item[key]):
                    raise FileNotFoundError(
                        f"Datalist {str(path)!r}: item {i} of {split!r} names {key}={item[key]!r}, which does not exist."
                    )
        out[split] = items
    if not out["training"]:
        raise ValueError(f"Datalist {str(path)!r} has an empty 'training' list.")
    out.setdefault("test", copy.deepcopy(out["validation"]))
    return out


def ct_datalist(dataset_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None, **kwargs) -> dict:
    """The CT bundle's datalist: the built-in demo set, an AAPM Low-Dose CT folder, or a datalist JSON.

    - ``dataset_dir`` None or "": the built-in demo data (:func:`monai_rat.data.make_ct_demo`, built once
      under ``cache_dir``, NIfTI files in HU); the log says so and how to point at real data.
    - a folder: the AAPM 2016 Low-Dose CT Grand Challenge data (:func:`monai_rat.data.aapm_datalist`,
      DICOM ``.IMA`` / ``.dcm`` files; layouts in docs/data.md).
    - a ``.json`` file: a MONAI datalist with "training" and "validation" (:func:`load_paired_datalist`).

    Every item is ``{"image": low_dose_path, "label": full_dose_path, "name": str, ...}``, with files
    readable by ``monai.transforms.LoadImaged`` (values in HU after the reader's rescale; normalise
    with the [-1024, 3072] HU window, see docs/data.md). The result is memoised per process and
    arguments (a deep copy is returned), so calling it once per split from a bundle config scans the
    data only once.

    Args:
        dataset_dir: None / "" (demo), an AAPM folder, or a datalist ``.json``.
        cache_dir: where the demo data is built (default ``$MONAI_RAT_CACHE`` or ``~/.cache/monai_rat``);
            unused for real data.
        kwargs: passed on to :func:`monai_rat.data.make_ct_demo` (demo: ``image_size``, ``num_train``,
            ``num_val``, ``dose_fraction``, ``seed`` ...) or :func:`monai_rat.data.aapm_datalist` (folder:
            ``test_patients``, ``thickness``, ``kernel`` ...); not accepted for a JSON file.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``; for an AAPM folder also "report"
        (per-patient counts and unpaired slices, see :func:`monai_rat.data.aapm_datalist`).

    Raises:
        FileNotFoundError: when ``dataset_dir`` does not exist (the message shows the accepted layouts).
        ValueError: when the folder or JSON is laid out wrongly, or ``kwargs`` are given for a JSON file.
        TypeError: when an unknown keyword is passed on.
    """
    key = (str(dataset_dir), str(cache_dir), tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    if key not in _MEMO:
        _MEMO[key] = _ct_datalist(dataset_dir, cache_dir, **kwargs)
    return copy.deepcopy(_MEMO[key])


def _ct_datalist(dataset_dir, cache_dir, **kwargs) -> dict:
    from monai_rat.data.aapm import AAPM_LAYOUTS, aapm_datalist
    from monai_rat.data.ct_demo import make_ct_demo

    if dataset_dir is None or str(dataset_dir).strip() == "":
        out = make_ct_demo(cache_dir, **kwargs)
        logger.warning(
            "No dataset_dir given: using the built-in CT DEMO data (%d training / %d validation pairs, simulated "
            "quarter dose from pydicom's CT_small.dcm, the Shepp-Logan phantom and ellipse phantoms; see "
            "monai_rat.data.make_ct_demo). To train on real data pass --dataset_dir /path/to/AAPM (the Low-Dose CT "
            "Grand Challenge folder) or --dataset_dir /path/to/datalist.json.",
            len(out["training"]), len(out["validation"]),
        )
        return out
    path = Path(dataset_dir).expanduser()
    if path.suffix.lower() == ".json":
        if kwargs:
            raise ValueError(f"ct_datalist: options {sorted(kwargs)} do not apply to a datalist JSON ({str(path)!r}).")
        out = load_paired_datalist(path)
        logger.info("CT data: datalist %s: %d training / %d validation pairs.", path, len(out["training"]), len(out["validation"]))
        return out
    if not path.exists():
        raise FileNotFoundError(
            f"dataset_dir {str(path)!r} does not exist. Expected either\n{AAPM_LAYOUTS}\nor {_JSON_LAYOUT},\n"
            "or no dataset_dir at all for the built-in demo data."
        )
    if not path.is_dir():
        raise ValueError(
            f"dataset_dir {str(path)!r} is a file but not a .json datalist. Expected either\n{AAPM_LAYOUTS}\nor {_JSON_LAYOUT}."
        )
    return aapm_datalist(path, **kwargs)
