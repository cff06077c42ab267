"""Find and pair the slices of the 2016 NIH-AAPM-Mayo Low-Dose CT Grand Challenge data on disk.

Layouts accepted (see ``AAPM_LAYOUTS`` and docs/data.md), found by walking ``dataset_dir``:

- classic: ``<root>/L067/full_1mm/*.IMA`` with ``<root>/L067/quarter_1mm/*.IMA``; also ``_3mm``, and
  ``full_1mm_sharp`` / ``quarter_1mm_sharp`` for the sharp (D45) kernel;
- re-released: ``<root>/1mm B30/full_1mm/L067/full_1mm/*.IMA`` and ``<root>/1mm B30/quarter_1mm/L067/quarter_1mm/*.IMA``
  (``3mm``, ``D45`` likewise);
- TCIA "LDCT-and-Projection-data": ``<root>/L067/<study>/1.000000-Full Dose Images-NNNN/1-001.dcm`` with a
  sibling ``...Low Dose Images...`` series folder.

Headers only are read (``pydicom.dcmread(stop_before_pixels=True)``); each series is sorted by
``ImagePositionPatient[2]`` (``InstanceNumber`` when a file of the series lacks the position), and
the full-dose and low-dose slices of a patient are paired by that key. Slices of one series with no
partner are reported (warning log and the returned "report"), never guessed.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

__all__ = ["aapm_datalist", "AAPM_LAYOUTS", "AAPM_PATIENTS", "read_series_headers"]

logger = logging.getLogger(__name__)

#: the ten patients of the challenge's training release; L506 is the usual test patient.
AAPM_PATIENTS = ("L067", "L096", "L109", "L143", "L192", "L286", "L291", "L310", "L333", "L506")

AAPM_LAYOUTS = """the AAPM Low-Dose CT Grand Challenge layout, one of
  <dataset_dir>/L067/full_1mm/*.IMA              and  <dataset_dir>/L067/quarter_1mm/*.IMA
      (also full_3mm / quarter_3mm, and full_1mm_sharp / quarter_1mm_sharp for the D45 kernel)
  <dataset_dir>/1mm B30/full_1mm/L067/full_1mm/*.IMA  and  <dataset_dir>/1mm B30/quarter_1mm/L067/quarter_1mm/*.IMA
  <dataset_dir>/L067/<study>/1.000000-Full Dose Images-NNNN/1-001.dcm  and  .../<n>-Low Dose Images-NNNN/1-001.dcm (TCIA)
with one folder per patient (L067 ... L506) holding a full-dose and a quarter-dose series (.IMA or .dcm files)"""

_CLASSIC = re.compile(r"^(full|quarter)_(\d+(?:\.\d+)?mm)(_sharp)?$", re.IGNORECASE)
_TCIA = re.compile(r"(full|low)\s*dose\s*images", re.IGNORECASE)
_DICOM_SUFFIXES = (".ima", ".dcm", ".dicom")


def _is_dicom_name(name: str) -> bool:
    return name.lower().endswith(_DICOM_SUFFIXES)


def read_series_headers(folder: str | os.PathLike, files: list[str] | None = None) -> list[dict]:
    """Read the headers of a DICOM series and sort its slices.

    Args:
        folder: the series folder.
        files: file names in ``folder`` (default: every ``.IMA`` / ``.dcm`` / ``.dicom`` file there).

    Returns:
        one dict per slice, sorted by ``key``: ``{"path", "key", "position", "instance", "shape",
        "has_rescale"}``; ``key`` is ``ImagePositionPatient[2]`` (mm) for every slice when all have it,
        else ``InstanceNumber``.

    Raises:
        ValueError: when a file is not readable DICOM or lacks the tags needed (the file is named),
            or when the folder holds no DICOM files.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    names = sorted(files if files is not None else [n for n in os.listdir(folder) if _is_dicom_name(n)])
    if not names:
        raise ValueError(f"Series folder {str(folder)!r} holds no .IMA / .dcm files.")
    slices = []
    for name in names:
        path = folder / name
        try:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except InvalidDicomError:  # a file without the DICOM preamble: accept it if its tags make sense
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            rows, cols = int(ds.Rows), int(ds.Columns)
            ipp = ds.get("ImagePositionPatient")
            position = float(ipp[2]) if ipp is not None and len(ipp) == 3 else None
            instance = ds.get("InstanceNumber")
            instance = int(instance) if instance not in (None, "") else None
        except Exception as e:  # noqa: BLE001 - re-raised naming the file
            raise ValueError(f"Cannot read the DICOM header of {str(path)!r}: {type(e).__name__}: {e}") from e
        if position is None and instance is None:
            raise ValueError(f"DICOM file {str(path)!r} has neither ImagePositionPatient nor InstanceNumber; cannot place it.")
        slices.append(
            {
                "path": str(path),
                "position": position,
                "instance": instance,
                "shape": (rows, cols),
                "has_rescale": "RescaleSlope" in ds and "RescaleIntercept" in ds,
            }
        )
    use_position = all(s["position"] is not None for s in slices)
    if not use_position:
        missing = [s["path"] for s in slices if s["position"] is None]
        logger.warning(
            "Series %s: %d file(s) lack ImagePositionPatient (first: %s); sorting and pairing by InstanceNumber.",
            folder, len(missing), missing[0],
        )
        if any(s["instance"] is None for s in slices):
            bad = next(s["path"] for s in slices if s["instance"] is None)
            raise ValueError(f"Series {str(folder)!r}: {bad!r} has neither ImagePositionPatient nor InstanceNumber.")
    for s in slices:
        s["key"] = round(s["position"], 3) if use_position else s["instance"]
        s["key_kind"] = "position" if use_position else "instance"
    slices.sort(key=lambda s: s["key"])
    for a, b in zip(slices, slices[1:]):
        if a["key"] == b["key"]:
            raise ValueError(
                f"Series {str(folder)!r}: {a['path']!r} and {b['path']!r} have the same "
                f"{a['key_kind']} {a['key']}; cannot order the slices."
            )
    return slices


def _find_series(root: Path) -> list[dict]:
    """Every folder holding DICOM files whose name marks a full- or low-dose series."""
    found, other = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        dicoms = [f for f in filenames if _is_dicom_name(f) and not f.startswith(".")]
        hidden = [f for f in filenames if _is_dicom_name(f) and f.startswith(".")]
        if hidden:  # e.g. macOS "._name.IMA" resource forks: not images
            logger.warning("AAPM discovery: %s: %d hidden file(s) named like DICOM are not used (first: %s).",
                           dirpath, len(hidden), hidden[0])
        if not dicoms:
            continue
        d = Path(dirpath)
        rel_parts = d.relative_to(root).parts
        m = _CLASSIC.match(d.name)
        if m and len(rel_parts) >= 2:
            sharp = bool(m.group(3)) or any("d45" in p.lower() for p in rel_parts)
            found.append(
                {
                    "dir": d, "files": dicoms, "layout": "classic" if len(rel_parts) == 2 else "re-released",
                    "dose": "full" if m.group(1).lower() == "full" else "quarter",
                    "thickness": m.group(2).lower(), "sharp": sharp, "patient": d.parent.name,
                }
            )
            continue
        m = _TCIA.search(d.name)
        if m and len(rel_parts) >= 3:
            found.append(
                {
                    "dir": d, "files": dicoms, "layout": "tcia",
                    "dose": "full" if m.group(1).lower() == "full" else "quarter",
                    "thickness": None, "sharp": any("d45" in p.lower() or "sharp" in p.lower() for p in rel_parts),
                    "patient": d.parent.parent.name,
                }
            )
            continue
        other.append(str(d))
    if other:
        logger.info("AAPM discovery: %d folder(s) with DICOM files do not match a known series name and are not used "
                    "(first: %s).", len(other), other[0])
    return found


def aapm_datalist(
    dataset_dir: str | os.PathLike,
    test_patients: tuple[str, ...] | list[str] | str = ("L506",),
    val_patients: tuple[str, ...] | list[str] | str | None = None,
    thickness: str = "1mm",
    kernel: str | None = None,
    max_unpaired: int = 2,
) -> dict:
    """Pair the quarter-dose and full-dose slices of the AAPM Low-Dose CT data and split them by patient.

    Three splits by patient: "test" (``test_patients``, L506 as in the paper: the reported scores),
    "validation" (``val_patients``: checkpoint choice and tuning; never the test patient) and
    "training" (everyone else). By default the validation patient is the last of the non-test
    patients in sorted order (L333 on the full data), so the paper's nine training patients become
    eight for training and one for validation.

    Series are found by walking ``dataset_dir`` (layouts in ``AAPM_LAYOUTS`` / docs/data.md); within
    each patient, the full-dose and quarter-dose series are sorted by ``ImagePositionPatient[2]``
    (``InstanceNumber`` as fallback) and paired by that key. A slice with no partner is listed in
    ``report["patients"][pid]["full_only"/"quarter_only"]``, counted in ``report["unpaired"]`` and
    logged as a warning; it is not used. More than ``max_unpaired`` unpaired slices in a patient is
    an error (the two series do not belong together), as is a shape mismatch within a pair.
    Progress is logged per patient.

    Args:
        dataset_dir: the root folder.
        test_patients: patient folder names held out for "test" (default ("L506",), the paper's test
            patient). A string is one patient.
        val_patients: patient folder names held out for "validation" (default ``None``: the last
            non-test patient in sorted order, when at least two non-test patients exist; with only
            one, "validation" is the test patients' list, and a warning says that validation scores
            are then not held out). ``()`` asks for that explicitly.
        thickness: slice thickness folder suffix, "1mm" (default) or "3mm" (classic and re-released
            layouts; TCIA series are not filtered by thickness).
        kernel: None or "B30" (default: the smooth kernel, folders without ``_sharp`` / ``D45``), or
            "sharp" / "D45" for the sharp kernel.
        max_unpaired: the most unpaired slices (both series together) accepted per patient (default 2).

    Returns:
        ``{"training": [...], "validation": [...], "test": [...], "report": {...}}``; items are
        ``{"image": quarter_dose_file, "label": full_dose_file, "name": "L067_0001", "patient": "L067",
        "position": float}`` ("position" is the pairing key: mm, or the instance number). The report: ``{"layout", "patients": {pid: {"full_dir", "quarter_dir", "full",
        "quarter", "paired", "full_only", "quarter_only", "split"}}, "unpaired", "num_pairs",
        "val_patients", "test_patients"}``.

    Raises:
        FileNotFoundError: when ``dataset_dir`` does not exist (the message shows the expected layout).
        ValueError: when no series matches the layout, a patient lacks one dose, a patient has two
            series for one dose, a test or validation patient is missing or in both lists, a pair's shapes differ (both files named),
            the unpaired slices exceed ``max_unpaired`` or nothing pairs (both folders named), a
            header is unreadable (the file named), or an argument is invalid.
    """
    root = Path(dataset_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"AAPM dataset_dir {str(root)!r} does not exist or is not a folder. Expected {AAPM_LAYOUTS}.")
    if isinstance(test_patients, str):
        test_patients = (test_patients,)
    test_patients = tuple(test_patients)
    if not all(isinstance(p, str) and p for p in test_patients):
        raise ValueError(f"aapm_datalist: `test_patients` must be patient folder names (strings), got {test_patients!r}.")
    thickness = str(thickness).lower()
    if not re.fullmatch(r"\d+(?:\.\d+)?mm", thickness):
        raise ValueError(f"aapm_datalist: `thickness` must look like '1mm' or '3mm', got {thickness!r}.")
    kernels = {None: False, "b30": False, "smooth": False, "sharp": True, "d45": True}
    kkey = None if kernel in (None, "") else str(kernel).lower()
    if kkey not in kernels:
        raise ValueError(f"aapm_datalist: `kernel` must be None, 'B30', 'sharp' or 'D45', got {kernel!r}.")
    want_sharp = kernels[kkey]
    if int(max_unpaired) < 0:
        raise ValueError(f"aapm_datalist: `max_unpaired` must be >= 0, got {max_unpaired}.")

    t0 = time.perf_counter()
    every = _find_series(root)
    series = [s for s in every if s["sharp"] == want_sharp and (s["thickness"] in (None, thickness))]
    if not series:
        seen = sorted({f"{s['dose']}_{s['thickness'] or '?'}{'_sharp' if s['sharp'] else ''}" for s in every})
        direct = sorted(p.name for p in root.iterdir() if p.is_dir() and _CLASSIC.match(p.name))
        if direct:
            raise ValueError(
                f"dataset_dir {str(root)!r} looks like one patient's folder (it holds {direct}); pass the folder "
                f"that holds the patient folders (its parent, {str(root.parent)!r}). Expected {AAPM_LAYOUTS}."
            )
        raise ValueError(
            f"No {thickness} {'sharp (D45)' if want_sharp else 'smooth (B30)'} full/quarter-dose series found under "
            f"{str(root)!r} (series kinds found: {seen or 'none'}). Expected {AAPM_LAYOUTS}."
        )
    by_patient: dict[str, dict[str, dict]] = {}
    for s in series:
        slot = by_patient.setdefault(s["patient"], {})
        if s["dose"] in slot:
            raise ValueError(
                f"Patient {s['patient']!r} has two {s['dose']}-dose series: {str(slot[s['dose']]['dir'])!r} and "
                f"{str(s['dir'])!r}; keep one (or pass `thickness` / `kernel` to choose)."
            )
        slot[s["dose"]] = s
    for pid, slot in sorted(by_patient.items()):
        for dose in ("full", "quarter"):
            if dose not in slot:
                other = "quarter" if dose == "full" else "full"
                raise ValueError(
                    f"Patient {pid!r} has a {other}-dose series ({str(slot[other]['dir'])!r}) but no {dose}-dose "
                    f"series. Expected {AAPM_LAYOUTS}."
                )
    missing_test = [p for p in test_patients if p not in by_patient]
    if missing_test:
        raise ValueError(
            f"aapm_datalist: test patient(s) {missing_test} not found under {str(root)!r}; patients found: "
            f"{sorted(by_patient)}. Pass `test_patients` to choose others."
        )
    val_patients = _validation_patients(val_patients, test_patients, sorted(by_patient), root)

    report: dict = {"layout": sorted({s["layout"] for s in series}), "patients": {}, "unpaired": 0, "num_pairs": 0}
    out: dict = {"training": [], "validation": [], "test": []}
    for n, (pid, slot) in enumerate(sorted(by_patient.items()), 1):
        full = read_series_headers(slot["full"]["dir"], slot["full"]["files"])
        quarter = read_series_headers(slot["quarter"]["dir"], slot["quarter"]["files"])
        fdir, qdir = str(slot["full"]["dir"]), str(slot["quarter"]["dir"])
        if full[0]["key_kind"] != quarter[0]["key_kind"]:
            full = _rekey_by_instance(full, fdir)
            quarter = _rekey_by_instance(quarter, qdir)
        fmap = {s["key"]: s for s in full}
        qmap = {s["key"]: s for s in quarter}
        keys = sorted(set(fmap) & set(qmap))
        full_only = [fmap[k]["path"] for k in sorted(set(fmap) - set(qmap))]
        quarter_only = [qmap[k]["path"] for k in sorted(set(qmap) - set(fmap))]
        unpaired = len(full_only) + len(quarter_only)
        if not keys or unpaired > max_unpaired:
            raise ValueError(
                f"Patient {pid!r}: the full-dose series {fdir!r} ({len(full)} slices) and the quarter-dose series "
                f"{qdir!r} ({len(quarter)} slices) do not match: {len(keys)} slices pair by "
                f"{full[0]['key_kind']}, {len(full_only)} full-dose and {len(quarter_only)} quarter-dose slices have "
                f"no partner (at most {max_unpaired} accepted; first unpaired: {(full_only + quarter_only)[:2]})."
            )
        if unpaired:
            logger.warning(
                "Patient %s: %d full-dose and %d quarter-dose slice(s) have no partner at the same %s and are not used: %s",
                pid, len(full_only), len(quarter_only), full[0]["key_kind"], full_only + quarter_only,
            )
        split = "test" if pid in test_patients else "validation" if pid in val_patients else "training"
        for i, k in enumerate(keys):
            f, q = fmap[k], qmap[k]
            if f["shape"] != q["shape"]:
                raise ValueError(
                    f"Patient {pid!r}: shape mismatch at {f['key_kind']} {k}: quarter-dose {q['path']!r} is "
                    f"{q['shape'][0]}x{q['shape'][1]} but full-dose {f['path']!r} is {f['shape'][0]}x{f['shape'][1]}."
                )
            out[split].append(
                {"image": q["path"], "label": f["path"], "name": f"{pid}_{i + 1:04d}", "patient": pid, "position": float(k)}
            )
        no_rescale = sum(not s["has_rescale"] for s in full + quarter)
        if no_rescale:
            logger.warning("Patient %s: %d file(s) lack RescaleSlope/RescaleIntercept; their stored values are "
                           "taken as HU.", pid, no_rescale)
        report["patients"][pid] = {
            "full_dir": fdir, "quarter_dir": qdir, "full": len(full), "quarter": len(quarter), "paired": len(keys),
            "full_only": full_only, "quarter_only": quarter_only, "split": split,
        }
        report["unpaired"] += unpaired
        report["num_pairs"] += len(keys)
        logger.info("AAPM discovery: patient %s (%d/%d): %d pairs (%s), %d unpaired.", pid, n, len(by_patient),
                    len(keys), split, unpaired)
    if not out["training"]:
        raise ValueError(
            f"aapm_datalist: no training patients left under {str(root)!r}: found {sorted(by_patient)}, all in "
            f"test_patients={list(test_patients)} or val_patients={list(val_patients)}."
        )
    if not out["test"]:
        logger.warning("aapm_datalist: no test patients (test_patients=%s): the test list is empty.", list(test_patients))
    if not val_patients:
        out["validation"] = [dict(item) for item in out["test"]]
    report.update(val_patients=list(val_patients) or list(test_patients), test_patients=list(test_patients))
    out["report"] = report
    logger.info(
        "AAPM discovery: %s: %d patients, %d training / %d validation (%s) / %d test (%s) pairs, %d unpaired slice(s) "
        "in %.1f s.", root, len(by_patient), len(out["training"]), len(out["validation"]),
        ", ".join(report["val_patients"]), len(out["test"]), ", ".join(test_patients), report["unpaired"],
        time.perf_counter() - t0,
    )
    return out


def _validation_patients(val_patients, test_patients: tuple[str, ...], found: list[str], root: Path) -> tuple[str, ...]:
    """The validation patients: as given (checked), or the last non-test patient; () when none is left."""
    if val_patients is None:
        others = [p for p in found if p not in test_patients]
        if len(others) >= 2:
            return (others[-1],)
        logger.warning(
            "aapm_datalist: only %d non-test patient(s) (%s): no patient is left to hold out for validation, so the "
            "validation list is the test patients' (%s) and validation scores are not held out.",
            len(others), others, list(test_patients),
        )
        return ()
    if isinstance(val_patients, str):
        val_patients = (val_patients,)
    val_patients = tuple(val_patients)
    if not all(isinstance(p, str) and p for p in val_patients):
        raise ValueError(f"aapm_datalist: `val_patients` must be patient folder names (strings), got {val_patients!r}.")
    both = sorted(set(val_patients) & set(test_patients))
    if both:
        raise ValueError(f"aapm_datalist: patient(s) {both} are in both `val_patients` and `test_patients`; the test patient "
                         "must not choose the checkpoint.")
    missing = [p for p in val_patients if p not in found]
    if missing:
        raise ValueError(
            f"aapm_datalist: validation patient(s) {missing} not found under {str(root)!r}; patients found: {found}. "
            "Pass `val_patients` to choose others."
        )
    if not val_patients:
        logger.warning("aapm_datalist: val_patients=(): the validation list is the test patients' (%s); validation "
                       "scores are not held out.", list(test_patients))
    return val_patients


def _rekey_by_instance(slices: list[dict], folder: str) -> list[dict]:
    if any(s["instance"] is None for s in slices):
        bad = next(s["path"] for s in slices if s["instance"] is None)
        raise ValueError(f"Series {folder!r}: {bad!r} has no InstanceNumber, needed to pair with the other dose's series.")
    for s in slices:
        s["key"], s["key_kind"] = s["instance"], "instance"
    return sorted(slices, key=lambda s: s["key"])
