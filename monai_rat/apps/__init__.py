"""Applications built on monai-rat: the MONAI Label app (``monai_rat/apps/monailabel``)."""
