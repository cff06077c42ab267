"""A few validation images (input, restored, target) in TensorBoard at every validation, with MONAI's image handler."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["TensorBoardValidationImages"]


class TensorBoardValidationImages:
    """Log the first ``num_images`` validation images to TensorBoard at every validation round.

    One MONAI ``TensorBoardImageHandler`` per image, each writing to its own folder
    ``<log_dir>/images/val_<k>`` (a TensorBoard run of that name; MONAI's tags: ``input_0_*`` is the
    low-quality input, ``input_1_*`` the target, ``output_*`` the restored image), fired at the evaluator
    iteration that holds image ``k``, with the evaluator's epoch (the trainer's validation round) as
    the step. MONAI's handler rescales each grey image to [0, 1] on its own; RGB images
    (``max_channels=3``) are shown as they are.

    Attach to the validation evaluator (the bundles' ``val_handlers``; rank 0 only there).

    Args:
        log_dir: the training log folder (TensorBoard's ``--logdir``).
        num_images: how many validation images (the first ones; default 3).
        max_channels: 1 for grey images, 3 for RGB.
        input_key: the input in the batch.
        label_key: the target in the batch.
        pred_key: the prediction in the output.

    Raises:
        ValueError: when ``num_images`` is negative.
    """

    def __init__(
        self,
        log_dir: str,
        num_images: int = 3,
        max_channels: int = 1,
        input_key: str = "image",
        label_key: str = "label",
        pred_key: str = "pred",
    ) -> None:
        if int(num_images) != num_images or num_images < 0:
            raise ValueError(f"TensorBoardValidationImages: `num_images` must be an integer >= 0, got {num_images!r}.")
        self.log_dir = str(log_dir)
        self.num_images = int(num_images)
        self.max_channels = int(max_channels)
        self.keys = (input_key, label_key, pred_key)
        self.handlers: list[Any] = []

    def attach(self, engine: Any) -> None:
        """Create and attach one ``TensorBoardImageHandler`` per image.

        Args:
            engine: the validation evaluator.
        """
        from ignite.engine import Events
        from monai.handlers import TensorBoardImageHandler, from_engine

        loader = getattr(engine, "data_loader", None)
        batch_size = int(getattr(loader, "batch_size", None) or 1)
        input_key, label_key, pred_key = self.keys
        for k in range(self.num_images):
            handler = TensorBoardImageHandler(
                log_dir=os.path.join(self.log_dir, "images", f"val_{k}"),
                epoch_level=True,  # the step is the evaluator's epoch: the trainer's validation round
                batch_transform=from_engine([input_key, label_key]),
                output_transform=from_engine([pred_key]),
                index=k % batch_size,
                max_channels=self.max_channels,
            )
            iteration = k // batch_size + 1

            def at(engine: Any, event: int, it: int = iteration) -> bool:  # noqa: ARG001
                return engine.state.iteration == it

            engine.add_event_handler(Events.ITERATION_COMPLETED(event_filter=at), handler)
            self.handlers.append(handler)
