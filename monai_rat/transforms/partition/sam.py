"""Region maps from Segment Anything: automatic mask generation, then the paper's post-processing."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry

from .base import RegionPartitioner, RegionPartitionerd
from .cache import file_identity
from .intensity import to_uint8_rgb
from .postprocess import masks_to_regions

__all__ = ["SAMPartition", "SAMPartitiond", "load_sam", "register_sam_model", "SAM_GENERATOR_DEFAULTS"]

logger = logging.getLogger(__name__)

#: segment-anything's own SamAutomaticMaskGenerator defaults (the settings the paper used)
SAM_GENERATOR_DEFAULTS: dict[str, Any] = {
    "points_per_side": 32,
    "pred_iou_thresh": 0.88,
    "stability_score_thresh": 0.95,
    "stability_score_offset": 1.0,
    "box_nms_thresh": 0.7,
    "crop_n_layers": 0,
    "crop_nms_thresh": 0.7,
    "crop_overlap_ratio": 512 / 1500,
    "crop_n_points_downscale_factor": 1,
    "min_mask_region_area": 0,
}

_EXTRA_BUILDERS: dict[str, Callable[..., Any]] = {}
_MODELS: dict[tuple, Any] = {}
_MODELS_LOCK = threading.Lock()


def register_sam_model(model_type: str, builder: Callable[..., Any]) -> None:
    """Make ``model_type`` name a SAM architecture besides segment-anything's ``vit_b``, ``vit_l``, ``vit_h``.

    For fine-tuned variants with another architecture (and for tests, which register tiny ones).

    Args:
        model_type: the name to register.
        builder: ``builder(checkpoint=None)`` returning a ``segment_anything.modeling.Sam`` with random weights.

    Raises:
        ValueError: when ``model_type`` is one of segment-anything's own names.
    """
    if model_type in sam_model_registry:
        raise ValueError(f"model_type {model_type!r} is segment-anything's own; register another name.")
    _EXTRA_BUILDERS[model_type] = builder


def _builder(model_type: str) -> Callable[..., Any]:
    builders = {**sam_model_registry, **_EXTRA_BUILDERS}
    if model_type not in builders:
        raise ValueError(f"model_type must be one of {sorted(builders)}, got {model_type!r}.")
    return builders[model_type]


_WARNED_WORKER = False


def _default_device(requested: str | torch.device | None = None) -> torch.device:
    """``requested``, or CUDA when available; the CPU, with a warning, where CUDA would crash or is unsafe.

    Inside a ``DataLoader`` worker (a cold region cache makes SAM run there) CUDA is not used by
    default: Linux forks the workers, and a forked process cannot initialise CUDA once the parent
    has (``RuntimeError: Cannot re-initialize CUDA in forked subprocess``), and each worker would
    hold its own copy of SAM on the GPU next to the training. An explicit CUDA ``device`` is kept
    in a worker unless the worker is such a fork (spawned workers can use CUDA).
    """
    global _WARNED_WORKER
    device = torch.device(requested) if requested is not None else None
    wants_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    in_worker = torch.utils.data.get_worker_info() is not None
    if wants_cuda and in_worker and (device is None or torch.cuda._is_in_bad_fork()):
        if not _WARNED_WORKER:
            _WARNED_WORKER = True
            warnings.warn(
                "SAMPartition: running SAM on the CPU inside a DataLoader worker "
                + ("(a forked worker cannot initialise CUDA). " if device is not None else "(the default there). ")
                + "For SAM on the GPU, fill the region cache first (`monai-rat-partition`, or a pass with "
                "num_workers=0), or pass device='cuda' with DataLoader(multiprocessing_context='spawn').",
                RuntimeWarning,
                stacklevel=3,
            )
        return torch.device("cpu")
    if device is not None:
        return device
    return torch.device("cuda" if wants_cuda else "cpu")


def load_sam(model_type: str, checkpoint: str | os.PathLike, device: str | torch.device | None = None) -> Any:
    """Build a SAM model and load its checkpoint, once per process per (model type, file, device).

    Args:
        model_type: ``"vit_b"`` (the paper's), ``"vit_l"``, ``"vit_h"`` or a name from :func:`register_sam_model`.
        checkpoint: path of the state-dict file (e.g. ``sam_vit_b_01ec64.pth``).
        device: where to put the model; CUDA when available by default, except inside a forked
            ``DataLoader`` worker, where it is the CPU with a warning (CUDA cannot be initialised there).

    Returns:
        the ``Sam`` model in eval mode.

    Raises:
        FileNotFoundError: when ``checkpoint`` is not a file (the message names the argument and the path).
        ValueError: when ``model_type`` is unknown, or the checkpoint does not fit ``model_type`` (the message
            names both).
    """
    path = os.fspath(checkpoint)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint: no such SAM checkpoint file {path!r}.")
    device = _default_device(device)
    st = os.stat(path)
    memo = (model_type, os.path.realpath(path), st.st_size, st.st_mtime_ns, str(device))
    with _MODELS_LOCK:
        if memo in _MODELS:
            return _MODELS[memo]
        build = _builder(model_type)
        logger.info("loading SAM %s from %s onto %s", model_type, path, device)
        model = build(checkpoint=None)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # not a torch file at all
            raise ValueError(
                f"checkpoint {path!r} could not be read as a SAM state dict for model_type {model_type!r}: {e}"
            ) from e
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
        _check_fits(model, state, model_type, path)
        model.load_state_dict(state)
        model.to(device).eval()
        _MODELS[memo] = model
        return model


def _check_fits(model: torch.nn.Module, state: Any, model_type: str, path: str) -> None:
    if not isinstance(state, dict):
        raise ValueError(
            f"checkpoint {path!r} does not fit model_type {model_type!r}: expected a state dict, got {type(state).__name__}."
        )
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        details = "; ".join(
            part
            for part in (
                f"{len(wrong)} shape mismatches, e.g. {wrong[0]}" if wrong else "",
                f"{len(missing)} missing keys, e.g. {missing[0]}" if missing else "",
                f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]}" if unexpected else "",
            )
            if part
        )
        raise ValueError(f"checkpoint {path!r} does not fit model_type {model_type!r}: {details}.")


class _PresetPredictor(SamPredictor):
    """A ``SamPredictor`` that can take an image embedding computed elsewhere (in a batch).

    ``preset = (original_size, input_size, features)``; ``set_image`` of an image of ``original_size`` then
    uses ``features`` instead of running the encoder. ``SamAutomaticMaskGenerator``'s first crop is always
    the whole image, and its other crops are smaller, so only the whole-image pass takes the preset.
    """

    preset: tuple | None = None

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        if self.preset is not None and tuple(image.shape[:2]) == self.preset[0]:
            self.reset_image()
            self.original_size, self.input_size, self.features = self.preset
            self.is_image_set = True
            return
        super().set_image(image, image_format)


class SAMPartition(RegionPartitioner):
    """Region map of an image from SAM automatic mask generation and the paper's post-processing (Eq. 1).

    Each 2D slice is converted to 8-bit RGB (an intensity ``window``, e.g. a CT window in HU, or the
    slice's ``percentiles``), segment-anything's ``SamAutomaticMaskGenerator`` proposes masks, and
    :func:`masks_to_regions` turns them into a partition (smallest mask wins, uncovered pixels form one
    background region, labels 1..L). A constant slice is one region without running SAM; a slice where
    SAM keeps no mask is one region too, and the log says so. 3D input (C, H, W, D) is partitioned slice
    by slice along ``slice_axis``.

    The model is built lazily on the first miss, once per process (see :func:`load_sam`); with
    ``cache_dir`` a cache hit never builds or runs it. :meth:`call_batch` encodes several slices in one
    image-encoder pass (``batch_size`` at a time); mask decoding stays per image, as in segment-anything.

    Args:
        model_type: SAM architecture: ``"vit_b"`` (the paper's), ``"vit_l"``, ``"vit_h"``, or a registered name.
        checkpoint: path of the SAM checkpoint (e.g. ``sam_vit_b_01ec64.pth``); exclusive with ``model``.
        model: an already-built ``segment_anything.modeling.Sam``; exclusive with ``checkpoint``.
        device: device for a model loaded from ``checkpoint`` (CUDA when available by default; the CPU
            with a warning inside ``DataLoader`` workers, see :func:`load_sam`); a given ``model`` is moved
            there only when ``device`` is set.
        points_per_side, pred_iou_thresh, stability_score_thresh, stability_score_offset, box_nms_thresh,
        crop_n_layers, crop_nms_thresh, crop_overlap_ratio, crop_n_points_downscale_factor,
        min_mask_region_area: ``SamAutomaticMaskGenerator`` settings (its defaults; ``min_mask_region_area > 0``
            needs OpenCV).
        points_per_batch: prompts decoded together (speed / memory only; not part of the cache key).
        batch_size: slices encoded together by :meth:`call_batch` (speed / memory only).
        window: ``(low, high)`` intensity window mapped to 0..255, e.g. ``(-160, 240)`` for CT in HU;
            ``None`` for percentile scaling.
        percentiles: ``(low, high)`` percentiles of each slice mapped to 0..255 when ``window`` is ``None``.
        slice_axis: spatial axis along which 3D input is cut (2 = D of (C, H, W, D)).
        cache_dir: folder of the on-disk region cache; ``None`` for none.

    Raises:
        FileNotFoundError: when ``checkpoint`` is given and is not a file (names ``checkpoint`` and the path).
        ValueError: when neither or both of ``checkpoint`` and ``model`` are given, ``model_type`` is unknown,
            or a setting is out of range.
    """

    def __init__(
        self,
        model_type: str = "vit_b",
        checkpoint: str | os.PathLike | None = None,
        model: Any = None,
        device: str | torch.device | None = None,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        min_mask_region_area: int = 0,
        batch_size: int = 1,
        window: Sequence[float] | None = None,
        percentiles: Sequence[float] = (0.5, 99.5),
        slice_axis: int = 2,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__(slice_axis=slice_axis, cache_dir=cache_dir)
        if (checkpoint is None) == (model is None):
            raise ValueError(
                "SAMPartition needs exactly one of `checkpoint` (a SAM checkpoint path) or `model` (a built Sam); "
                f"got checkpoint={checkpoint!r} and model={'a model' if model is not None else None}."
            )
        if checkpoint is not None:
            _builder(model_type)  # unknown model_type fails here, before any work
            if not os.path.isfile(os.fspath(checkpoint)):
                raise FileNotFoundError(f"checkpoint: no such SAM checkpoint file {os.fspath(checkpoint)!r}.")
        if int(points_per_side) < 1:
            raise ValueError(f"points_per_side must be >= 1, got {points_per_side!r}.")
        if int(batch_size) < 1 or int(points_per_batch) < 1:
            raise ValueError(f"batch_size and points_per_batch must be >= 1, got {batch_size!r}, {points_per_batch!r}.")
        self.model_type = model_type
        self.checkpoint = os.fspath(checkpoint) if checkpoint is not None else None
        self.device = torch.device(device) if device is not None else None
        self.generator_settings = {
            "points_per_side": int(points_per_side),
            "pred_iou_thresh": float(pred_iou_thresh),
            "stability_score_thresh": float(stability_score_thresh),
            "stability_score_offset": float(stability_score_offset),
            "box_nms_thresh": float(box_nms_thresh),
            "crop_n_layers": int(crop_n_layers),
            "crop_nms_thresh": float(crop_nms_thresh),
            "crop_overlap_ratio": float(crop_overlap_ratio),
            "crop_n_points_downscale_factor": int(crop_n_points_downscale_factor),
            "min_mask_region_area": int(min_mask_region_area),
        }
        self.points_per_batch = int(points_per_batch)
        self.batch_size = int(batch_size)
        self.window = tuple(float(v) for v in window) if window is not None else None
        self.percentiles = tuple(float(v) for v in percentiles)
        self._model = model
        if model is not None and self.device is not None:
            self._model = model.to(self.device)
        self._generator: Any = None
        self._model_id: str | None = None
        self._lock = threading.Lock()  # the generator's predictor holds one image at a time

    # -- model ----------------------------------------------------------------------------------------
    @property
    def model(self) -> Any:
        """The SAM model, loaded on first use (once per process for a checkpoint).

        Raises:
            FileNotFoundError: when the checkpoint file has disappeared since construction.
            ValueError: when the checkpoint does not fit ``model_type``.
        """
        if self._model is None:
            self._model = load_sam(self.model_type, self.checkpoint, self.device)
        return self._model

    @property
    def generator(self) -> Any:
        """The ``SamAutomaticMaskGenerator`` over :attr:`model`, built on first use.

        Raises:
            FileNotFoundError: as :attr:`model`.
            ValueError: as :attr:`model`.
            ImportError: when ``min_mask_region_area > 0`` and OpenCV is not installed (segment-anything needs it).
        """
        if self._generator is None:
            gen = SamAutomaticMaskGenerator(self.model, points_per_batch=self.points_per_batch, **self.generator_settings)
            gen.predictor = _PresetPredictor(self.model)
            self._generator = gen
        return self._generator

    def model_identity(self) -> str:
        """What identifies the weights in the cache key: the checkpoint's content hash or the given model's.

        Returns:
            a hex digest (the given model's parameters are hashed once per transform).

        Raises:
            FileNotFoundError: when the checkpoint file has disappeared.
        """
        if self._model_id is None:
            if self.checkpoint is not None:
                self._model_id = "file-sha256:" + file_identity(self.checkpoint)
            else:
                digest = hashlib.sha256()
                for name, tensor in sorted(self._model.state_dict().items()):
                    t = tensor.detach().to("cpu").contiguous()
                    digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
                    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
                self._model_id = "state-sha256:" + digest.hexdigest()
        return self._model_id

    def settings(self) -> dict[str, Any]:
        """Everything that changes the map (the cache key's settings).

        Returns:
            method, model type, weights identity, generator settings, intensity window / percentiles, slice axis.

        Raises:
            FileNotFoundError: when the checkpoint file has disappeared (its content is hashed).
        """
        return {
            "method": "sam",
            "model_type": self.model_type,
            "weights": self.model_identity(),
            "generator": self.generator_settings,
            "window": self.window,
            "percentiles": None if self.window is not None else self.percentiles,
            "slice_axis": self.slice_axis,
        }

    # -- work -----------------------------------------------------------------------------------------
    def partition_slices(self, slices: Sequence[np.ndarray]) -> list[np.ndarray]:
        """SAM region maps of 2D slices, image encoding ``batch_size`` slices at a time.

        Args:
            slices: (C, H, W) finite arrays with C in {1, 3}.

        Returns:
            one int32 (H, W) map with labels 1..L per slice.

        Raises:
            ValueError: when the window or percentiles are invalid.
        """
        rgbs = [to_uint8_rgb(s, self.window, self.percentiles) for s in slices]
        out: list[np.ndarray | None] = [None] * len(slices)
        todo = []
        for i, (s, rgb) in enumerate(zip(slices, rgbs)):
            if rgb is None:
                logger.info("SAMPartition: constant image of shape %s is one region.", tuple(s.shape[1:]))
                out[i] = np.ones(s.shape[1:], dtype=np.int32)
            else:
                todo.append(i)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            feats = self._encode([rgbs[i] for i in chunk]) if len(chunk) > 1 else [None]
            for i, preset in zip(chunk, feats):
                out[i] = self._generate(rgbs[i], preset)
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def _encode(self, rgbs: list[np.ndarray]) -> list[tuple]:
        """Image embeddings of several RGB images in one image-encoder pass."""
        model = self.model
        transform = self.generator.predictor.transform
        tensors, sizes = [], []
        for rgb in rgbs:
            resized = transform.apply_image(rgb)
            t = torch.as_tensor(resized, device=model.device).permute(2, 0, 1).contiguous()[None]
            tensors.append(model.preprocess(t))
            sizes.append(tuple(resized.shape[:2]))
        feats = model.image_encoder(torch.cat(tensors))
        return [(tuple(rgb.shape[:2]), size, feats[j : j + 1]) for j, (rgb, size) in enumerate(zip(rgbs, sizes))]

    def _generate(self, rgb: np.ndarray, preset: tuple | None) -> np.ndarray:
        with self._lock:
            gen = self.generator
            gen.predictor.preset = preset
            try:
                records = gen.generate(rgb)
            finally:
                gen.predictor.preset = None
        if not records:
            logger.info(
                "SAMPartition: SAM kept no mask for an image of shape %s; the whole image is one region.",
                rgb.shape[:2],
            )
        return masks_to_regions(records, shape=rgb.shape[:2])

    def __getstate__(self) -> dict[str, Any]:
        # a model loaded from a checkpoint is reloaded in the receiving process, not pickled
        state = dict(self.__dict__)
        state["_generator"] = None
        del state["_lock"]
        if self.checkpoint is not None:
            state["_model"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


class SAMPartitiond(RegionPartitionerd):
    """Dictionary version of :class:`SAMPartition`: adds the SAM region map of ``data[key]`` as ``data[regions_key]``.

    Args:
        keys: image key(s).
        regions_key: output key(s), one per image key; default ``"regions"``.
        allow_missing_keys: do not raise when a key is absent.
        kwargs: the arguments of :class:`SAMPartition` (``model_type``, ``checkpoint``, ``model``, ``device``,
            generator settings, ``batch_size``, ``window``, ``percentiles``, ``slice_axis``, ``cache_dir``).

    Raises:
        FileNotFoundError: when ``checkpoint`` is given and is not a file.
        ValueError: as :class:`SAMPartition`, or when ``regions_key`` does not match ``keys``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        regions_key: str | Sequence[str] = "regions",
        allow_missing_keys: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(keys, SAMPartition(**kwargs), regions_key, allow_missing_keys)
