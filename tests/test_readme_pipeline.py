"""The README's plain-MONAI pipeline (SupervisedTrainer + sliding-window SupervisedEvaluator), run as written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- sliding-window-pipeline -->"


def _readme_python(marker: str) -> str:
    """The python block after ``marker`` in the README."""
    text = README.read_text()
    assert marker in text, f"README.md has no {marker} block"
    return text.split(marker, 1)[1].split("```python", 1)[1].split("```", 1)[0]


def test_readme_pipeline_trains_validates_and_keeps_geometry():
    """A reader's copy of the README block: it runs, predictions keep the input's affine, one window = whole image."""
    torch.manual_seed(0)
    ns: dict = {"__name__": "readme_pipeline"}
    exec(compile(_readme_python(MARKER), str(README), "exec"), ns)  # noqa: S102 (the README's own block)
    trainer, evaluator, network, item = ns["trainer"], ns["evaluator"], ns["network"], ns["item"]

    assert trainer.state.iteration == 3 and evaluator.state.epoch == 1
    assert torch.isfinite(torch.tensor(evaluator.state.metrics["val_mae"]))
    affine = item(0)["image"].affine
    train_pred = trainer.state.output[0]["pred"]  # SimpleInferer: the network's own output
    assert isinstance(train_pred, MetaTensor) and torch.equal(train_pred.affine, affine)

    val = item(11)  # the last validation item (no shuffling)
    pred = evaluator.state.output[-1]["pred"]
    assert isinstance(pred, MetaTensor) and torch.equal(pred.affine, val["image"].affine)
    network.eval()
    with torch.no_grad():
        whole = network.network(val["image"][None].as_tensor(), val["regions"][None])  # bare RAT, whole image
    torch.testing.assert_close(pred.as_tensor(), whole[0])


def test_bare_rat_in_a_sliding_window_needs_the_wrapper():
    """Why the README uses the wrapper: MONAI crops the image, not an extra ``regions`` argument."""
    from monai_rat.engines import ConditionRegionsNetwork
    from monai_rat.networks import RAT

    net = RAT(feature_size=8, num_groups=1, layers_per_group=1).eval()
    x, regions = torch.rand(1, 1, 32, 32), torch.randint(0, 4, (1, 1, 32, 32))
    inferer = SlidingWindowInferer(roi_size=(16, 16), sw_batch_size=4, overlap=0.25)
    with torch.no_grad(), pytest.raises(ValueError, match="`regions` must match the image"):
        inferer(x, net, regions=regions)
    with torch.no_grad():
        y = inferer(x, ConditionRegionsNetwork(net), condition=regions)
    assert y.shape == x.shape and torch.isfinite(y).all()
