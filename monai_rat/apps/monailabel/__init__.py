"""MONAI Label app serving RAT restoration and region maps (3D Slicer, OHIF, any HTTP client).

Start it with::

    monailabel start_server --app "$(python -c 'import monai_rat.apps.monailabel as m; print(m.APP_DIR)')" \\
        --studies /path/to/images --conf models ct

``APP_DIR`` is this folder (the one holding ``main.py``). The modules :mod:`.bundles` and :mod:`.pipeline`
need only MONAI; :mod:`.infers` and ``main.py`` need the ``monailabel`` extra
(``pip install "monai-rat[monailabel]"``). See ``docs/monailabel.md``.
"""

from pathlib import Path

#: the app folder to pass to ``monailabel start_server --app``
APP_DIR = str(Path(__file__).resolve().parent)

__all__ = ["APP_DIR"]
