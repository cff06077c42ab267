"""MONAI Label infer tasks: ``restore_<model>`` and ``regions_<model>`` for every served bundle.

Both are MONAI Label ``InferTask`` s (the ``monailabel`` package's interface), implemented on
:class:`~monai_rat.apps.monailabel.pipeline.SlicePipeline`, which runs the bundle's own
``inference.json`` transforms and network slice by slice. Needs the ``monailabel`` extra.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from .bundles import RATBundle
from .pipeline import SlicePipeline, load_input, write_result

__all__ = ["RATInferTask", "RestoreTask", "RegionsTask"]

logger = logging.getLogger(__name__)


class RATInferTask(InferTask):
    """Common part of the two tasks: load the request's image, run, write the result file.

    ``__call__`` returns ``(result file, params)`` as MONAI Label expects; the file is written to a new
    temporary file that MONAI Label deletes after sending it. Errors are
    :class:`~monai_rat.apps.monailabel.pipeline.InputError` (the image) and
    :class:`~monai_rat.apps.monailabel.bundles.CheckpointError` (the model); the app turns them into
    HTTP 4xx / 503 answers with the message.

    Args:
        pipeline: the bundle's slice pipeline (shared by the model's two tasks).
        type: MONAI Label infer type.
        description: the text ``/info/`` shows.
    """

    kind = ""

    def __init__(self, pipeline: SlicePipeline, type: str | InferType, description: str) -> None:
        super().__init__(type=type, labels=[], dimension=2, description=description, config={})
        self.pipeline = pipeline
        self.bundle: RATBundle = pipeline.bundle

    def is_valid(self) -> bool:
        """Always listed in ``/info/``: a task whose model lacks a checkpoint answers with the reason."""
        return True

    def get_path(self, validate: bool = True) -> str | None:
        """The checkpoint file (``None`` when ``validate`` and it does not exist).

        Args:
            validate: return ``None`` for a missing file.
        """
        p = self.bundle.ckpt_path
        return str(p) if (p.is_file() or not validate) else None

    def info(self) -> dict[str, Any]:
        """MONAI Label's task info plus the model, bundle and checkpoint status."""
        out = super().info()
        out.update({"model": self.bundle.name, "task": self.kind, **self.bundle.describe()})
        return out

    def run(self, img: Any, kind: str, name: str) -> Any:
        """Compute the result tensor (see subclasses).

        Args:
            img: the loaded image.
            kind: its kind.
            name: its name, for messages.

        Raises:
            NotImplementedError: in the base class.
        """
        raise NotImplementedError

    def __call__(self, request: dict) -> tuple[str | None, dict]:
        """Run the task on ``request["image"]`` (a file path; MONAI Label saves uploads to one).

        Args:
            request: MONAI Label's request: ``image``; optional ``result_dtype`` (label maps).

        Raises:
            InputError: for an unusable image.
            CheckpointError: (restore) when the model has no usable checkpoint.
        """
        start = time.time()
        path = str(request.get("image", ""))
        name = Path(path).name
        img, kind = load_input(path)
        loaded = time.time()
        result = self.run(img, kind, name)
        ran = time.time()
        out_dir = tempfile.mkdtemp(prefix=f"monai_rat_{self.kind}_")
        stem = name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else Path(name).stem
        out, written = write_result(
            result,
            path,
            kind,
            out_dir,
            f"{stem}_{self.kind}",
            radiology=self.bundle.is_radiology,
            label=self.kind == "regions",
            requested_dtype=request.get("result_dtype") if self.kind == "regions" else None,
        )
        params = {
            "model": self.bundle.name,
            "task": self.kind,
            "shape": list(result.shape[1:]),
            "slices": 1 if result.ndim == 3 else int(result.shape[-1]),
            **written,
            "latencies": {"load": round(loaded - start, 3), "run": round(ran - loaded, 3), "total": round(time.time() - start, 3)},
        }
        params.update(self.extra_params(result))
        logger.info(f"{self.kind}_{self.bundle.name}: {name} {tuple(result.shape)} in {params['latencies']['total']:.2f} s")
        return out, params

    def extra_params(self, result: Any) -> dict:
        """Task-specific result parameters.

        Args:
            result: the result tensor.
        """
        return {}


class RestoreTask(RATInferTask):
    """``restore_<model>``: the restored image, same shape and geometry as the input, float32.

    Radiology models return NIfTI in the input's units (CT: HU); pathology models return the input's
    PNG / TIFF format. MONAI Label type ``others`` (an image, not a segmentation).

    Args:
        pipeline: the bundle's slice pipeline.
    """

    kind = "restore"

    def __init__(self, pipeline: SlicePipeline) -> None:
        b = pipeline.bundle
        out = "NIfTI, float32, in the input's units (CT: HU)" if b.is_radiology else "the input's PNG/TIFF format"
        self._base_description = (
            f"RAT restoration with the {b.title} bundle ({b.name}): returns the restored image with the input's shape "
            f"and geometry ({out}); volumes are restored slice by slice along the last axis."
        )
        super().__init__(pipeline, InferType.OTHERS, self._base_description)

    def info(self) -> dict[str, Any]:
        """As the base class, with ``NOT READY: ...`` in the description while the checkpoint is missing."""
        ckpt = self.bundle.ckpt_path
        self.description = self._base_description + ("" if ckpt.is_file() else f" NOT READY: checkpoint {ckpt} is missing.")
        return super().info()

    def run(self, img: Any, kind: str, name: str) -> Any:
        """Restore ``img`` (see :meth:`SlicePipeline.restore`).

        Args:
            img: the loaded image.
            kind: its kind.
            name: its name.

        Raises:
            CheckpointError: when the model has no usable checkpoint.
            InputError: when the bundle's preprocessing rejects the image.
        """
        return self.pipeline.restore(img, kind, name)


class RegionsTask(RATInferTask):
    """``regions_<model>``: the region map RAT's attention is restricted to, as a label image.

    Labels 1..L per 2D slice (every pixel belongs to exactly one region), same shape and geometry as
    the input. MONAI Label type ``segmentation``, so 3D Slicer and OHIF list it and show the regions as
    segments; ``label_names`` in the result names them ``region 1`` ... ``region L``. Needs no checkpoint.

    Args:
        pipeline: the bundle's slice pipeline.
    """

    kind = "regions"

    def __init__(self, pipeline: SlicePipeline) -> None:
        b = pipeline.bundle
        super().__init__(
            pipeline,
            InferType.SEGMENTATION,
            f"Region map of the {b.title} bundle ({b.name}): the partition RAT's region attention is restricted to "
            "(SAM with a configured checkpoint, else superpixels), as a label image with the input's shape and "
            "geometry, labels 1..L per slice; needs no model checkpoint.",
        )

    def run(self, img: Any, kind: str, name: str) -> Any:
        """Region map of ``img`` (see :meth:`SlicePipeline.regions`).

        Args:
            img: the loaded image.
            kind: its kind.
            name: its name.

        Raises:
            InputError: when the bundle's preprocessing rejects the image.
        """
        return self.pipeline.regions(img, kind, name)

    def extra_params(self, result: Any) -> dict:
        """``label_names`` (``{"region k": k}``) and the number of regions per slice.

        Args:
            result: the region map.
        """
        import torch

        t = result.as_tensor() if hasattr(result, "as_tensor") else torch.as_tensor(result)
        per_slice = [int(t.max())] if t.ndim == 3 else [int(t[..., k].max()) for k in range(t.shape[-1])]
        top = max(per_slice) if per_slice else 0
        return {"regions_per_slice": per_slice, "label_names": {f"region {k}": k for k in range(1, top + 1)}}


def make_tasks(bundle: RATBundle, device: str = "cpu") -> dict[str, RATInferTask]:
    """The two tasks of one bundle, sharing one pipeline: ``{"restore_<name>": ..., "regions_<name>": ...}``.

    Args:
        bundle: the bundle.
        device: torch device for its network.
    """
    pipe = SlicePipeline(bundle, device=device)
    return {f"restore_{bundle.name}": RestoreTask(pipe), f"regions_{bundle.name}": RegionsTask(pipe)}


def default_device() -> str:
    """``cuda`` when available (or ``$MONAI_RAT_DEVICE``), else ``cpu``."""
    import torch

    return os.environ.get("MONAI_RAT_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
