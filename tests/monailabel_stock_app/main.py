"""A MONAI Label app that serves bundles with MONAI Label's *stock* bundle tasks only.

It does what MONAI Label's ``monaibundle`` sample app does for a local bundle, and nothing more: for
every bundle folder it registers ``monailabel.tasks.infer.bundle.BundleInferTask`` (named after the
folder) and ``monailabel.tasks.train.bundle.BundleTrainTask``; no monai-rat task classes. It is the
fixture of ``tests/test_monailabel_stock.py`` and an example of serving a monai-rat bundle the stock
way; monai-rat's own app (``monai_rat/apps/monailabel``) is the recommended route, see
``docs/monailabel.md`` ("MONAI Label's stock bundle app") for what works here and what does not.

Start it (the bundle folder needs a checkpoint in ``models/model.pt``, else the stock infer task
leaves it out)::

    monailabel start_server --app tests/monailabel_stock_app --studies /path/to/images \\
        --conf bundles /path/to/ct [--conf bundles /path/to/ct,/path/to/other]

``--conf bundles``: comma-separated bundle folders (each with ``configs/inference.json``,
``configs/train.json``, ``configs/metadata.json``); the model name is the folder's name. Unlike the
sample app, nothing is downloaded from the model zoo.
"""

import logging
import os

import monailabel
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.train.bundle import BundleTrainTask

logger = logging.getLogger(__name__)


class StockBundleApp(MONAILabelApp):
    """One stock ``BundleInferTask`` and one stock ``BundleTrainTask`` per bundle folder in ``--conf bundles``."""

    def __init__(self, app_dir, studies, conf):
        folders = [p.strip() for p in str(conf.get("bundles", "")).split(",") if p.strip()]
        if not folders:
            raise ValueError("Give the bundles to serve: --conf bundles /path/to/bundle[,/path/to/another].")
        self.bundles = {}
        for folder in folders:
            path = os.path.abspath(os.path.expanduser(folder)).rstrip(os.sep)
            if not os.path.isfile(os.path.join(path, "configs", "inference.json")):
                raise ValueError(f"{path!r} is not a bundle folder (no configs/inference.json).")
            self.bundles[os.path.basename(path)] = path
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="monai-rat bundles with MONAI Label's stock bundle tasks",
            description="BundleInferTask and BundleTrainTask for: " + ", ".join(self.bundles),
            version=monailabel.__version__,
        )

    def init_infers(self):
        infers = {}
        for name, path in self.bundles.items():
            task = BundleInferTask(path, self.conf)
            if task.is_valid():
                infers[name] = task
            else:  # the stock task logs why (e.g. no models/model.pt)
                logger.warning(f"No infer task for {name}: BundleInferTask found it invalid ({path}).")
        return infers

    def init_trainers(self):
        trainers = {}
        for name, path in self.bundles.items():
            task = BundleTrainTask(path, self.conf)
            if task.is_valid():
                trainers[name] = task
        return trainers
