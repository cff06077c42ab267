"""PET data: the datalist (demo, folder of paired NIfTI volumes, or datalist JSON) and 3D -> 2D slicing.

The paper trains the 2D RAT on slices of 3D PET volumes with the air-only slices dropped. Here:

- :func:`pet_datalist` lists paired volumes (``"image"`` = low dose, ``"label"`` = full dose), split by
  patient so that no patient has slices on both sides;
- :class:`VolumeToSlicesd` turns one loaded pair into a list of 2D slice dictionaries along a
  configurable axis, dropping **air-only** slices: a slice is air-only when its maximum in the
  reference key (default ``"label"``, the full-dose volume) is at most ``air_threshold`` (default
  0.01) times that volume's maximum. Every drop is counted and logged (logger
  ``monai_rat.data.pet_data``), and the counts are kept in ``last_counts``;
- :class:`PETSliceDataset` loads every listed pair once, slices it with :class:`VolumeToSlicesd` and
  serves the kept slices, from memory (float32, about 2 x 320 KB per 192 x 416 slice pair) or, with
  ``cache_dir``, from an on-disk store of uncompressed ``.npy`` files read as memory maps (the PET
  bundle uses one under ``<user cache>/pet/slices`` whenever a ``dataset_dir`` is given).
"""

from __future__ import annotations

import copy
import logging
import os
import random
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["PET_DATA_HINT", "pet_datalist", "pet_volume_pairs", "VolumeToSlicesd", "VolumeToSlicesD", "VolumeToSlicesDict", "PETSliceDataset"]

logger = logging.getLogger(__name__)

#: what the PET bundle's ``--dataset_dir`` accepts, for the advice in the log (demo data, schedule).
PET_DATA_HINT = (
    "a folder with low_dose/ and full_dose/ sub-folders of NIfTI volumes (.nii, .nii.gz) with the same file "
    'names, or a MONAI datalist .json of {"image": low dose, "label": full dose} volume pairs'
)
_MEMO: dict = {}
_NIFTI = (".nii", ".nii.gz")
_FOLDER_LAYOUT = """a folder of paired NIfTI volumes:
  <dataset_dir>/low_dose/<patient>.nii.gz    (the "image")
  <dataset_dir>/full_dose/<patient>.nii.gz   (the "label"; same file names, same shapes)"""


def _stem(p: Path) -> str:
    name = p.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _check_nifti_pair(name: str, low: str | os.PathLike, full: str | os.PathLike, where: str = "pet_datalist") -> None:
    """Read both NIfTI headers (no voxel data): readable, 3D, same shape; else raise naming the files."""
    from monai_rat.data.loading import read_image_header

    shapes = []
    for path in (low, full):
        try:
            shapes.append(read_image_header(path))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from e
    if shapes[0] != shapes[1]:
        raise ValueError(
            f"{where}: {name}: low_dose shape {shapes[0]} != full_dose shape {shapes[1]} "
            f"({str(low)!r}, {str(full)!r}); a pair must have the same shape (same grid)."
        )
    if len(shapes[0]) != 3:
        raise ValueError(f"{where}: {name}: expected a 3D volume, got shape {shapes[0]} ({str(low)!r}).")


def pet_volume_pairs(dataset_dir: str | os.PathLike) -> list[dict]:
    """Pair ``low_dose/<patient>.nii[.gz]`` with ``full_dose/<patient>.nii[.gz]`` by file name.

    Shapes are read from the NIfTI headers (no voxel data) and must agree within each pair.

    Args:
        dataset_dir: a folder laid out as ``low_dose/`` and ``full_dose/`` sub-folders of NIfTI files.

    Returns:
        ``[{"image": low_path, "label": full_path, "name": patient}, ...]`` sorted by patient.

    Raises:
        FileNotFoundError: when the folder or a sub-folder does not exist, or holds no NIfTI file.
        ValueError: when a patient is in one sub-folder only (all are named), or a pair's shapes differ,
            or a file is not a readable NIfTI (the file is named).
    """
    root = Path(dataset_dir).expanduser()
    found = {}
    for sub in ("low_dose", "full_dose"):
        folder = root / sub
        if not folder.is_dir():
            raise FileNotFoundError(f"pet_datalist: {str(folder)!r} does not exist; expected {_FOLDER_LAYOUT}.")
        files = {_stem(p): p for p in sorted(folder.iterdir()) if p.name.endswith(_NIFTI)}
        if not files:
            raise FileNotFoundError(f"pet_datalist: no .nii / .nii.gz file in {str(folder)!r}; expected {_FOLDER_LAYOUT}.")
        found[sub] = files
    low, full = found["low_dose"], found["full_dose"]
    only_low, only_full = sorted(set(low) - set(full)), sorted(set(full) - set(low))
    if only_low or only_full:
        raise ValueError(
            f"pet_datalist: unpaired volumes in {str(root)!r}: only in low_dose/: {only_low}; only in full_dose/: "
            f"{only_full}. Every patient needs both files (same name)."
        )
    items = []
    for name in sorted(low):
        _check_nifti_pair(f"patient {name!r}", low[name], full[name])
        items.append({"image": str(low[name]), "label": str(full[name]), "name": name})
    return items


def pet_datalist(
    dataset_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    val_patients: Sequence[str] | None = None,
    val_fraction: float = 25 / 115,
    seed: int = 0,
    test_patients: Sequence[str] | None = None,
    test_fraction: float = 0.0,
    **kwargs,
) -> dict:
    """The PET datalist: the built-in demo volumes, a folder of paired NIfTI volumes, or a datalist JSON.

    - ``dataset_dir`` None or "": the demo (:func:`monai_rat.data.make_pet_demo`, built once under
      ``cache_dir``; ``kwargs`` go to it; three splits by anatomy); the log says so.
    - a folder: :func:`pet_volume_pairs` (``low_dose/`` and ``full_dose/`` with the same file names),
      split by patient. "test": ``test_patients`` when given, else a seeded random ``test_fraction`` of
      the patients (default 0: no test split). "validation": ``val_patients`` when given (none of them a
      test patient), else a seeded random ``val_fraction`` of all patients (default 25 / 115, the
      paper's 90 / 25 split), drawn from the patients not in "test"; at least one patient each in
      training and validation. Without a test split, "test" is the validation list and a WARNING says
      that scores on it are not held out from checkpoint choice.
    - a ``.json`` file: a MONAI datalist with "training", "validation" and optionally "test" of volume
      pairs (:func:`monai_rat.data.load_paired_datalist`); its split is used as it is (without "test",
      "test" = "validation", with the same WARNING). Pairs of NIfTI files are checked like a folder's
      (headers only: readable, 3D, same shape); other formats are checked when
      :class:`PETSliceDataset` loads them.

    Memoised per process and arguments (a deep copy is returned).

    Args:
        dataset_dir: None / "" (demo), a folder, or a datalist ``.json``.
        cache_dir: where the demo is built (default ``$MONAI_RAT_CACHE`` or ``~/.cache/monai_rat``).
        val_patients: patient names (file names without extension) for validation (folder only).
        val_fraction: share of all patients for validation when ``val_patients`` is None (folder only),
            in (0, 1).
        seed: seed of the random patient splits (folder only).
        test_patients: patient names for the test split (folder only).
        test_fraction: share of patients for test when ``test_patients`` is None (folder only), in
            [0, 1); 0 (default): no test split.
        kwargs: passed to :func:`monai_rat.data.make_pet_demo` (demo only).

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}`` of ``{"image", "label", "name"}``
        items (the demo's also carry "source" and "anatomy").

    Raises:
        FileNotFoundError: when ``dataset_dir`` or a listed file does not exist.
        ValueError: for unpaired or mismatched volumes or an unreadable NIfTI header (the files are
            named), an unknown name in ``val_patients`` or ``test_patients``, a patient in both, a
            fraction out of range, a split that leaves training or validation empty, or ``kwargs``
            given for real data.
    """
    key = (str(dataset_dir), str(cache_dir), repr(val_patients), float(val_fraction), int(seed), repr(test_patients),
           float(test_fraction), tuple(sorted((k, repr(v)) for k, v in kwargs.items())))  # fmt: skip
    if key not in _MEMO:
        _MEMO[key] = _pet_datalist(dataset_dir, cache_dir, val_patients, val_fraction, seed, test_patients, test_fraction, **kwargs)
    return copy.deepcopy(_MEMO[key])


def _warn_no_test(where: str, how: str) -> None:
    logger.warning(
        "PET data: %s has no test split, so \"test\" = \"validation\": scores on \"test\" are NOT held out from "
        "checkpoint choice (the best checkpoint is picked on the same volumes). %s", where, how,
    )


def _pet_datalist(dataset_dir, cache_dir, val_patients, val_fraction, seed, test_patients, test_fraction, **kwargs) -> dict:
    import json

    from monai_rat.data.datalist import load_paired_datalist
    from monai_rat.data.pet_demo import make_pet_demo

    if dataset_dir is None or str(dataset_dir).strip() == "":
        out = make_pet_demo(cache_dir, **kwargs)
        logger.warning(
            "No dataset_dir given: using the built-in PET DEMO data (%d training / %d validation / %d test patients, split "
            "by anatomy; simulated low-count PET at DRF %s from textured activity phantoms, the Shepp-Logan phantom, and "
            "pydicom's JPEG2000.dcm bone scan (validation) and MR_small.dcm (test); see monai_rat.data.make_pet_demo). "
            "To train on real data pass --dataset_dir with %s.",
            len(out["training"]), len(out["validation"]), len(out["test"]), kwargs.get("dose_reduction_factor", 12), PET_DATA_HINT,
        )
        return out
    if kwargs:
        raise ValueError(f"pet_datalist: options {sorted(kwargs)} apply to the demo data only, not to {str(dataset_dir)!r}.")
    path = Path(dataset_dir).expanduser()
    if path.suffix.lower() == ".json":
        out = load_paired_datalist(path)
        for split in ("training", "validation", "test"):
            for i, it in enumerate(out[split]):
                if all(str(it[k]).lower().endswith(_NIFTI) for k in ("image", "label")):  # other formats: at load
                    _check_nifti_pair(f"{str(path)!r}: item {i} of {split!r}", it["image"], it["label"])
        with open(path) as f:
            has_test = "test" in json.load(f)
        logger.info("PET data: datalist %s: %d training / %d validation / %d test volumes.",
                    path, len(out["training"]), len(out["validation"]), len(out["test"]))
        if not has_test:
            _warn_no_test(f"datalist {str(path)!r}", 'Add a "test" list of held-out volumes to the JSON.')
        return out
    if not path.is_dir():
        raise FileNotFoundError(
            f"dataset_dir {str(path)!r} is not a folder or a .json datalist. Expected {_FOLDER_LAYOUT}, a MONAI datalist "
            "JSON, or no dataset_dir for the demo data."
        )
    items = pet_volume_pairs(path)
    names = [it["name"] for it in items]
    order = list(names)
    random.Random(seed).shuffle(order)
    for what, given in (("test_patients", test_patients), ("val_patients", val_patients)):
        unknown = sorted(set(given or ()) - set(names))
        if unknown:
            raise ValueError(f"pet_datalist: `{what}` {unknown} are not in {str(path)!r} (patients: {names}).")
    if test_patients is not None:
        test = set(test_patients)
    else:
        if not 0 <= float(test_fraction) < 1:
            raise ValueError(f"pet_datalist: `test_fraction` must be in [0, 1), got {test_fraction!r}.")
        test = set(order[: max(1, int(round(test_fraction * len(order))))]) if test_fraction > 0 else set()
    if val_patients is not None:
        both = sorted(set(val_patients) & test)
        if both:
            raise ValueError(f"pet_datalist: patient(s) {both} are in both validation and test; a test patient must be held out.")
        val = set(val_patients)
    else:
        if not 0 < float(val_fraction) < 1:
            raise ValueError(f"pet_datalist: `val_fraction` must be in (0, 1), got {val_fraction!r}.")
        rest = [n for n in order if n not in test]
        val = set(rest[: max(1, int(round(val_fraction * len(order))))])
    out = {
        "training": [it for it in items if it["name"] not in val | test],
        "validation": [it for it in items if it["name"] in val],
        "test": [it for it in items if it["name"] in test],
    }
    if not out["training"] or not out["validation"]:
        raise ValueError(
            f"pet_datalist: the patient split of {len(items)} patient(s) in {str(path)!r} leaves "
            f"{len(out['training'])} for training, {len(out['validation'])} for validation and {len(out['test'])} for "
            "test; training and validation both need >= 1."
        )
    logger.info("PET data: %s: %d training / %d validation / %d test patients (validation: %s; test: %s).",
                path, len(out["training"]), len(out["validation"]), len(out["test"]), sorted(val), sorted(test))
    if not test:
        out["test"] = copy.deepcopy(out["validation"])
        _warn_no_test(str(path), "Pass test_patients=[...] or test_fraction=... to hold patients out for the test split.")
    return out


class VolumeToSlicesd(MapTransform):
    """Cut channel-first 3D volumes ``(C, X, Y, Z)`` into 2D slices ``(C, ., .)``, dropping air-only slices.

    Returns a **list** of dictionaries, one per kept slice index (MONAI's convention for transforms
    that yield several samples, e.g. ``RandCropByPosNegLabeld``): the keys hold MetaTensors with the
    slice axis removed (the affine loses that axis' row and column), other entries are copied, and
    ``"slice_index"`` / ``"slice_axis"`` say where the slice came from. A slice is air-only when
    ``max(reference slice) <= air_threshold * max(reference volume)``; dropped slices are counted in
    ``last_counts`` (``{"kept": n, "dropped_air": m}``) and logged (INFO) with the file name.
    A volume that is all air yields an empty list (logged as a WARNING).

    Args:
        keys: the volume keys to slice (default "image" and "label").
        axis: the spatial axis to slice along: 0, 1 or 2 (or -1 for the last; default -1, axial for
            RAS-ordered volumes).
        reference_key: the key whose values decide air-only slices (default "label", the full dose).
        air_threshold: fraction of the reference volume's maximum at or below which a slice is
            air-only (default 0.01); 0 drops only slices that are exactly zero everywhere, a negative
            value keeps every slice.
        allow_missing_keys: do not raise when a key is missing.

    Raises:
        ValueError: when ``axis`` is out of range; at call time when a volume is not ``(C, X, Y, Z)``,
            the keys' shapes differ, or the reference holds NaN.
        KeyError: when a key or ``reference_key`` is missing.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        axis: int = -1,
        reference_key: str = "label",
        air_threshold: float = 0.01,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if axis not in (0, 1, 2, -1, -2, -3):
            raise ValueError(f"VolumeToSlicesd: `axis` must be a spatial axis 0, 1 or 2 (or -1..-3), got {axis!r}.")
        self.axis = axis % 3
        self.reference_key = reference_key
        self.air_threshold = float(air_threshold)
        self.last_counts = {"kept": 0, "dropped_air": 0}

    def __call__(self, data: Mapping[Hashable, object]) -> list[dict]:
        """Slice the volumes.

        Args:
            data: a dictionary with the channel-first 3D volumes.

        Returns:
            a list of dictionaries, one per kept slice.

        Raises:
            ValueError: as the class docstring says.
            KeyError: when ``reference_key`` is missing.
        """
        import torch
        from monai.data import MetaTensor
        from monai.utils import convert_to_numpy

        d = dict(data)
        if self.reference_key not in d:
            raise KeyError(f"VolumeToSlicesd: `reference_key` {self.reference_key!r} is not in the data (keys {sorted(map(str, d))}).")
        keys = [k for k in self.key_iterator(d)]
        ref = d[self.reference_key]
        shape = tuple(ref.shape)
        name = _filename(ref)
        for k in keys + [self.reference_key]:
            s = tuple(d[k].shape)
            if len(s) != 4:
                raise ValueError(f"VolumeToSlicesd: {k!r} must be a channel-first 3D volume (C, X, Y, Z), got shape {s} {name}.")
            if s[1:] != shape[1:]:
                raise ValueError(
                    f"VolumeToSlicesd: {k!r} has spatial shape {s[1:]} {_filename(d[k])}, {self.reference_key!r} has "
                    f"{shape[1:]} {name}; the volumes of a pair must have the same shape."
                )
        ref_np = convert_to_numpy(ref, dtype=np.float32)
        if np.isnan(ref_np).any():
            raise ValueError(f"VolumeToSlicesd: {self.reference_key!r} holds NaN values {name}.")
        spatial_axis = 1 + self.axis
        per_slice = np.moveaxis(ref_np, spatial_axis, 0).reshape(shape[spatial_axis], -1).max(axis=1)
        vmax = float(per_slice.max()) if per_slice.size else 0.0
        if self.air_threshold < 0:
            keep = np.ones(per_slice.shape, dtype=bool)
        else:
            keep = per_slice > self.air_threshold * max(vmax, 0.0)
        self.last_counts = {"kept": int(keep.sum()), "dropped_air": int((~keep).sum())}
        log = logger.warning if not keep.any() else logger.info
        log(
            "VolumeToSlicesd: %s: kept %d of %d slices along axis %d; dropped %d air-only (max <= %g x volume max %g).",
            name or "<volume>", self.last_counts["kept"], keep.size, self.axis, self.last_counts["dropped_air"],
            self.air_threshold, vmax,
        )
        out = []
        for idx in np.flatnonzero(keep):
            item = {k: v for k, v in d.items() if k not in keys}
            for k in keys:
                vol = d[k]
                arr = vol.as_tensor() if isinstance(vol, MetaTensor) else vol
                sl = [slice(None)] * 4
                sl[spatial_axis] = int(idx)
                meta = dict(vol.meta) if isinstance(vol, MetaTensor) else {}
                affine = None
                if isinstance(vol, MetaTensor):
                    a = convert_to_numpy(vol.affine, dtype=np.float64)
                    rows = [i for i in range(3) if i != self.axis] + [3]
                    affine = a[np.ix_(rows, rows)]
                    meta.pop("affine", None)
                    meta.pop("original_affine", None)
                    meta.pop("spatial_shape", None)
                item[k] = MetaTensor(torch.as_tensor(arr)[tuple(sl)].clone(), affine=affine, meta=meta)
            item["slice_index"] = int(idx)
            item["slice_axis"] = self.axis
            out.append(item)
        return out


VolumeToSlicesD = VolumeToSlicesDict = VolumeToSlicesd


def _filename(x) -> str:
    return str(getattr(x, "meta", {}).get("filename_or_obj", "")) if hasattr(x, "meta") else ""


def _pair_of_ints(value, what: str) -> tuple[int, int] | None:
    if value is None:
        return None
    v = [value, value] if isinstance(value, (int, np.integer)) else list(value)
    if len(v) != 2 or not all(isinstance(x, (int, np.integer)) and x > 0 for x in v):
        raise ValueError(f"PETSliceDataset: `{what}` must be a positive int or two of them (H, W), got {value!r}.")
    return int(v[0]), int(v[1])


class PETSliceDataset:
    """A map-style dataset of 2D slice pairs from 3D PET volume pairs, air-only slices dropped.

    Loads every item of ``data`` once with :class:`monai_rat.data.LoadImageCheckedd` (MONAI's
    ``LoadImaged(keys, ensure_channel_first=True)``, naming a file it cannot read; float32), slices it
    with :class:`VolumeToSlicesd` and keeps the slices in memory; ``transform`` (e.g. normalisation,
    random crops and rotations) runs on each slice at access. The totals are logged (INFO) and kept in
    ``counts`` (``{"volumes", "slices_total", "kept", "dropped_air"}``).

    With ``cache_dir``, the kept slices of each volume pair are written once to an uncompressed ``.npy``
    file there (named by a hash of the files' paths, sizes and times and the slicing settings; written
    atomically, reused by later runs) and read back as memory maps at access: memory then holds one
    volume at a time while building and only the slices in use while training (the paper's 90
    patients, 192 x 416 slices, would be about 11 GB in memory otherwise).

    With ``min_size`` (the training patch size), a volume whose slices are smaller than it along either
    in-plane side raises ``ValueError`` naming the file and both sizes, here at construction; MONAI's
    ``RandSpatialCropd`` would otherwise return a smaller patch without a word and the batch would fail
    (or train on mixed sizes) later. Nothing is padded.

    Every pair is checked as it is loaded, before any training (:func:`monai_rat.data.pair_problems`):
    both files readable, finite values in both (a NaN in the full-dose label would make every loss
    NaN), the same shape and the same grid (affine: spacing, axes, origin within 0.1 voxel). A bad
    pair raises ``ValueError`` naming both files; with ``skip_bad=True`` it is left out instead, logged
    (WARNING) with its files and reason and counted in ``counts["skipped_bad"]``.

    Args:
        data: items ``{"image": low_dose_path, "label": full_dose_path, ...}`` (e.g. a split of
            :func:`pet_datalist`).
        transform: a callable applied to each slice dictionary at access (``None``: none).
        keys: the volume keys (default "image" and "label").
        axis: slice axis, see :class:`VolumeToSlicesd` (default -1).
        air_threshold: see :class:`VolumeToSlicesd` (default 0.01).
        reference_key: see :class:`VolumeToSlicesd` (default "label").
        min_size: the smallest allowed slice, ``(H, W)`` in the sliced volume's axis order or one int
            for both (e.g. the training ``patch_size``); ``None`` (default): no check.
        cache_dir: a folder for the on-disk slice store (see above); ``None`` (default): in memory.
        skip_bad: leave bad pairs out (each logged and counted) instead of raising (the bundles'
            ``--skip_bad_pairs``).

    Raises:
        ValueError: as :class:`VolumeToSlicesd` (e.g. the two volumes of a pair differ in shape; both
            files are named), when a file cannot be read (named, the reader's error chained), when a
            pair holds NaN or infinite values or its volumes are not on the same grid, when a
            volume's slices are smaller than ``min_size``, when ``min_size`` is not one or two positive
            ints, or when no slice is left at all.
        FileNotFoundError: when a listed file does not exist (it is named).
    """

    def __init__(
        self,
        data: Sequence[Mapping],
        transform=None,
        keys: Sequence[str] = ("image", "label"),
        axis: int = -1,
        air_threshold: float = 0.01,
        reference_key: str = "label",
        min_size: int | Sequence[int] | None = None,
        cache_dir: str | os.PathLike | None = None,
        skip_bad: bool = False,
    ) -> None:
        import torch
        from monai.transforms import EnsureTyped

        from monai_rat.data.loading import LoadImageCheckedd

        self.min_size = _pair_of_ints(min_size, "min_size")
        # called one after the other, not in a Compose: its RuntimeError("applying transform ...") would
        # bury the loader's message, which names the file
        load, to_float = LoadImageCheckedd(list(keys), image_only=True, ensure_channel_first=True), EnsureTyped(list(keys), dtype=torch.float32)
        slicer = VolumeToSlicesd(keys, axis=axis, reference_key=reference_key, air_threshold=air_threshold)
        self.transform = transform
        self.keys = list(keys)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.slices: list[dict] = []
        self.counts = {"volumes": 0, "slices_total": 0, "kept": 0, "dropped_air": 0}
        if skip_bad:
            self.counts["skipped_bad"] = 0
        for item in data:
            try:
                loaded = to_float(load(dict(item)))
                slices = slicer(loaded)  # checks the volumes' dimensions and shapes
                self._check_pair(loaded, item)  # finite values, same grid
                if self.min_size is not None:
                    self._check_size(loaded[reference_key].shape, slicer.axis, item)
            except (ValueError, OSError) as e:  # each names its files
                if not skip_bad:
                    raise
                logger.warning("PETSliceDataset: skipping a bad pair (skip_bad_pairs): %s", e)
                self.counts["skipped_bad"] += 1
                continue
            if self.cache_dir is not None and slices:
                slices = self._store(slices, item, (slicer.axis, air_threshold, reference_key))
            del loaded
            self.slices.extend(slices)
            self.counts["volumes"] += 1
            self.counts["kept"] += slicer.last_counts["kept"]
            self.counts["dropped_air"] += slicer.last_counts["dropped_air"]
        self.counts["slices_total"] = self.counts["kept"] + self.counts["dropped_air"]
        logger.info(
            "PETSliceDataset: %d volumes, %d slices along axis %d: kept %d, dropped %d air-only (threshold %g x volume max)%s.",
            self.counts["volumes"], self.counts["slices_total"], slicer.axis, self.counts["kept"],
            self.counts["dropped_air"], air_threshold,
            f"; skipped {self.counts['skipped_bad']} bad pair(s) (skip_bad_pairs)" if self.counts.get("skipped_bad") else "",
        )
        if not self.slices:
            raise ValueError(f"PETSliceDataset: no slice left of {self.counts['volumes']} volume(s) ({self.counts}).")

    def _store(self, slices: list[dict], item: Mapping, settings: tuple) -> list[dict]:
        """Write the kept slices' arrays to one ``.npy`` (once) and keep references to them instead."""
        import hashlib

        sources = [os.stat(str(item[k])) for k in self.keys]
        key = repr(([str(Path(str(item[k])).resolve()) for k in self.keys], [(st.st_size, st.st_mtime_ns) for st in sources],
                    settings, self.keys, [s["slice_index"] for s in slices]))  # fmt: skip
        path = self.cache_dir / f"slices_{hashlib.sha256(key.encode()).hexdigest()[:24]}.npy"
        if not path.is_file():
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            arr = np.stack([np.stack([np.asarray(s[k].as_tensor(), np.float32) for k in self.keys]) for s in slices])
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, arr)
            os.replace(tmp, path)  # atomic: a crash or a concurrent writer never leaves a partial file
        out = []
        for i, s in enumerate(slices):
            ref = dict(s)
            for j, k in enumerate(self.keys):
                ref[k] = _StoredSlice(str(path), i, j, s[k].affine, dict(s[k].meta))
            out.append(ref)
        return out

    def _check_pair(self, loaded: Mapping, item: Mapping) -> None:
        from monai_rat.data.pair_check import pair_problems

        keys = [k for k in self.keys if k in loaded]
        problems = pair_problems(loaded, keys) if len(keys) > 1 else []
        if problems:
            files = ", ".join(repr(str(item[k])) for k in keys)
            raise ValueError(
                f"PETSliceDataset: bad pair {files}, found before training started: {'; '.join(problems)}. Fix or remove "
                "it, or pass --skip_bad_pairs true to leave bad pairs out."
            )

    def _check_size(self, shape: Sequence[int], axis: int, item: Mapping) -> None:
        in_plane = tuple(int(n) for i, n in enumerate(shape[1:]) if i != axis)
        if any(n < m for n, m in zip(in_plane, self.min_size)):
            files = ", ".join(repr(str(item[k])) for k in ("image", "label") if k in item)
            raise ValueError(
                f"PETSliceDataset: {files}: the slices along axis {axis} are {in_plane[0]} x {in_plane[1]} (volume shape "
                f"{tuple(int(n) for n in shape[1:])}), smaller than min_size {self.min_size[0]} x {self.min_size[1]} (the "
                "training patch_size): no patch of that size can be cropped from them. Use a smaller --patch_size, "
                "another --slice_axis, or leave this volume out; nothing is padded."
            )

    def __len__(self) -> int:
        """Number of kept slices."""
        return len(self.slices)

    def __getitem__(self, index: int) -> dict:
        """One slice dictionary, transformed.

        Args:
            index: slice index in ``[0, len(self))``.

        Returns:
            the (transformed) slice dictionary; the stored one is not modified.

        Raises:
            IndexError: when ``index`` is out of range.
        """
        item = {k: (v.load() if isinstance(v, _StoredSlice) else v) for k, v in self.slices[index].items()}
        return self.transform(item) if self.transform is not None else item


class _StoredSlice:
    """Where one slice of one key lives in a slice store: read back as a MetaTensor (a copy) at access."""

    __slots__ = ("path", "index", "key_index", "affine", "meta")

    def __init__(self, path: str, index: int, key_index: int, affine, meta: dict) -> None:
        self.path, self.index, self.key_index, self.affine, self.meta = path, index, key_index, affine, meta

    def load(self):
        import torch
        from monai.data import MetaTensor

        arr = np.load(self.path, mmap_mode="r")[self.index, self.key_index]
        meta = dict(self.meta)
        meta.pop("affine", None)  # given once, as `affine` (MONAI warns when the meta holds one too)
        return MetaTensor(torch.from_numpy(np.array(arr)), affine=self.affine, meta=meta)
