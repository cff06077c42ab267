"""ConditionRegionsNetwork: the whole-image region map reaches each sliding window cropped like the input."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from torch import nn

from monai_rat.engines.sliding_regions import ConditionRegionsNetwork


class _Probe(nn.Module):
    """Returns its input and checks that the regions equal the window's first channel (the map was the image)."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.weight = nn.Parameter(torch.ones(1))

    def forward(self, x, regions):
        assert regions.dtype == torch.long and regions.shape == (x.shape[0], 1, *x.shape[2:])
        torch.testing.assert_close(regions.float(), x[:, :1])
        self.calls += 1
        return x * self.weight


@pytest.mark.parametrize("size, roi", [((70, 90), (32, 32)), ((20, 24), (32, 32))])  # larger and smaller than the window
def test_region_crop_alignment_and_seamless_blend(size, roi):
    regions = torch.randint(0, 50, (1, 1, *size))
    image = regions.float().repeat(1, 3, 1, 1)  # the image *is* the map: any misaligned crop would show
    probe = _Probe()
    out = SlidingWindowInferer(roi_size=roi, overlap=0.25, mode="gaussian", sw_batch_size=2)(
        image, ConditionRegionsNetwork(probe), condition=regions.repeat(1, 3, 1, 1)
    )
    assert probe.calls > 0
    torch.testing.assert_close(out, image)  # identity windows blended back exactly: no seams


def test_errors_and_state_dict():
    net = ConditionRegionsNetwork(_Probe())
    with pytest.raises(ValueError, match="condition"):
        net(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="does not match"):
        net(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 4))
    with pytest.raises(ValueError, match="partition"):
        ConditionRegionsNetwork(_Probe(), partition="superpixels")
    # image only: the partition makes the map (here: the image's first channel, so the probe's check holds)
    image = torch.randint(0, 5, (2, 1, 8, 8)).float().repeat(1, 3, 1, 1)
    torch.testing.assert_close(ConditionRegionsNetwork(_Probe(), partition=lambda x: x[:1].long())(image), image)
    assert list(net.state_dict()) == ["weight"]
    net.load_state_dict({"weight": torch.full((1,), 2.0)})
    assert float(net.network.weight.detach()) == 2.0


def test_fitted_window_equals_a_whole_image_pass_for_small_images_and_is_unchanged_for_large():
    """MONAI zero-pads an image smaller than the window; RAT's channel attention pools over the padded window, so
    the plain inferer changes every pixel. The fitted inferer clips the window: same as restoring the image whole."""
    from monai_rat.engines.sliding_regions import FittedSlidingWindowInferer
    from monai_rat.networks import RAT

    torch.manual_seed(0)
    net = ConditionRegionsNetwork(RAT(in_channels=3, out_channels=3, feature_size=8).eval())
    x = torch.rand(1, 3, 40, 24)
    regions = (torch.arange(24) >= 12).long().expand(1, 1, 40, 24) + 1
    cond = regions.repeat(1, 3, 1, 1)
    args = dict(roi_size=(64, 64), overlap=0.25, mode="gaussian", sw_batch_size=1)
    with torch.no_grad():
        whole = net.network(x, regions)
        fitted = FittedSlidingWindowInferer(**args)(x, net, condition=cond)
        padded = SlidingWindowInferer(**args)(x, net, condition=cond)
        torch.testing.assert_close(fitted, whole, rtol=1e-5, atol=1e-5)
        assert (padded - whole).abs().max() > 1e-3  # what the clip avoids
        big = torch.rand(1, 3, 80, 72)
        cb = torch.ones(1, 3, 80, 72)
        small_roi = dict(args, roi_size=(32, 32))
        torch.testing.assert_close(FittedSlidingWindowInferer(**small_roi)(big, net, condition=cb),
                                   SlidingWindowInferer(**small_roi)(big, net, condition=cb))  # fmt: skip
