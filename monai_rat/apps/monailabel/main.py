"""The monai-rat MONAI Label app: ``monailabel start_server --app <this folder> --studies DIR --conf models ct``.

Serves, for every selected bundle ``<model>`` (a folder ``<bundles>/<model>`` with
``configs/inference.json``), two infer tasks:

- ``restore_<model>``: the restored image, same shape and geometry as the input (NIfTI for radiology);
- ``regions_<model>``: the region map attention is restricted to, as a label image (a segmentation).

``--conf`` settings:

- ``models``: ``ct``, ``ct,pet``, ``all`` (default: every bundle found); an unknown name stops the
  server at start with the list of available models;
- ``bundles``: the folder of bundles (default ``$MONAI_RAT_BUNDLES``, else the repository's ``bundles/``);
- ``<model>.<config id> VALUE``: override an id of that bundle's ``inference.json``
  (``--conf ct.ckpt_path /path/model.pt``, ``--conf ct.feature_size 16``, ``--conf ct.sam_checkpoint FILE``).

Errors reach the client as HTTP answers with a message: 400 / 415 for an unusable upload, 404 for an
unknown task, 503 for a model without a usable checkpoint (the server keeps running).
See ``docs/monailabel.md``.
"""

import logging
from pathlib import Path

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException

from monai_rat import __version__
from monai_rat.apps.monailabel.bundles import CheckpointError, RATBundle, default_bundles_dir, parse_overrides, select_models
from monai_rat.apps.monailabel.infers import default_device, make_tasks
from monai_rat.apps.monailabel.pipeline import InputError

logger = logging.getLogger(__name__)


class RATApp(MONAILabelApp):
    """MONAI Label app serving RAT restoration (``restore_<model>``) and region maps (``regions_<model>``).

    Args:
        app_dir: this folder (MONAI Label passes it).
        studies: the datastore folder (or DICOMweb URL).
        conf: ``--conf`` settings (see the module docstring).

    Raises:
        ValueError: for an unknown model in ``--conf models``, an unknown ``--conf`` key, or a bundle
            config that cannot be read; the server does not start and prints the message.
        FileNotFoundError: when the folder of bundles does not exist.
    """

    def __init__(self, app_dir, studies, conf):
        conf = dict(conf or {})
        self.bundles_dir = Path(conf["bundles"]).expanduser().resolve() if conf.get("bundles") else default_bundles_dir()
        self.model_names = select_models(conf.get("models"), self.bundles_dir)
        overrides = parse_overrides(conf, self.model_names)
        self.bundles = {m: RATBundle(m, self.bundles_dir / m, overrides[m]) for m in self.model_names}
        self.device = default_device()
        logger.info(
            "monai-rat app: models %s from %s on %s; checkpoints: %s",
            self.model_names,
            self.bundles_dir,
            self.device,
            {m: (str(b.ckpt_path) if b.ckpt_path.is_file() else f"MISSING {b.ckpt_path}") for m, b in self.bundles.items()},
        )
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="monai-rat",
            description=(
                "Region Attention Transformer (RAT) restoration and region maps. Tasks: restore_<model> returns the "
                "restored image; regions_<model> returns the region map attention is restricted to. Models: "
                + ", ".join(self.model_names)
            ),
            version=__version__,
        )

    def init_infers(self):
        """``restore_<model>`` and ``regions_<model>`` for every served model."""
        tasks = {}
        for bundle in self.bundles.values():
            tasks.update(make_tasks(bundle, self.device))
        return tasks

    def init_trainers(self):
        """No training through MONAI Label: train with the bundles (``python -m monai.bundle run training``)."""
        return {}

    def init_scoring_methods(self):
        """No scoring methods."""
        return {}

    def infer(self, request, datastore=None):
        """Run a task; turn errors into HTTP answers that carry the message.

        Args:
            request: MONAI Label's infer request.
            datastore: as ``MONAILabelApp.infer``.

        Raises:
            HTTPException: 400 / 415 (unusable image), 404 (unknown task), 503 (no usable checkpoint),
                500 (anything else, with the error's text).
        """
        model = request.get("model")
        if model not in self._infers:
            raise HTTPException(
                status_code=404, detail=f"No infer task {model!r}. Available tasks: {', '.join(sorted(self._infers))}."
            )
        try:
            return super().infer(request, datastore)
        except InputError as e:
            raise HTTPException(status_code=e.status, detail=f"{model}: {e}") from e
        except CheckpointError as e:
            raise HTTPException(status_code=503, detail=f"{model}: {e}") from e
        except MONAILabelException as e:
            code = 400 if e.error in (MONAILabelError.INVALID_INPUT, MONAILabelError.APP_ERROR) else 500
            raise HTTPException(status_code=code, detail=f"{model}: {e.msg}") from e
        except HTTPException:
            raise
        except Exception as e:  # noqa: BLE001 - the client gets the reason instead of a bare 500
            logger.exception("infer %s failed", model)
            raise HTTPException(status_code=500, detail=f"{model}: {type(e).__name__}: {e}") from e
