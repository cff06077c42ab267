"""SelfEnsembleInferer: the x8 self-ensemble (4 rotations x flip) of image and region map together, checked
against transforms written out here with torch.flip / torch.rot90, not with the module's own helpers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from monai_rat.engines import ConditionRegionsNetwork, FittedSlidingWindowInferer, SelfEnsembleInferer
from monai_rat.engines.self_ensemble import DIHEDRAL_TRANSFORMS, dihedral, dihedral_inverse


def _forward(x, k, flip):
    x = torch.flip(x, dims=[-1]) if flip else x
    return torch.rot90(x, k, dims=[-2, -1])


def _backward(y, k, flip):
    y = torch.rot90(y, -k, dims=[-2, -1])
    return torch.flip(y, dims=[-1]) if flip else y


def _by_hand(fn, x, regions):
    """The x8 average, written out: each of the 8 transforms, the network, the inverse, the mean."""
    outs = [_backward(fn(_forward(x, k, f), _forward(regions, k, f)), k, f) for f in (False, True) for k in range(4)]
    return torch.stack(outs).mean(0)


class Recorder(nn.Module):
    """Records what each pass receives; returns the region map as float (equivariant) plus 0 * x."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = []

    def forward(self, x, regions=None):
        self.calls.append((x.clone(), regions.clone()))
        return regions.float() + 0 * x


def test_the_8_transforms_are_distinct_and_inverted():
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(1, 2, 3, 5)  # non-square, no symmetry
    seen = set()
    for k, flip in DIHEDRAL_TRANSFORMS:
        y = dihedral(x, k, flip)
        assert torch.equal(y, _forward(x, k, flip))
        assert y.shape[-2:] == ((5, 3) if k % 2 else (3, 5))
        assert torch.equal(dihedral_inverse(y, k, flip), x)
        seen.add(tuple(y.reshape(-1).tolist()))
    assert len(DIHEDRAL_TRANSFORMS) == 8 and len(seen) == 8


def test_an_equivariant_network_gives_exactly_its_plain_output():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 12, 20)
    assert torch.equal(SelfEnsembleInferer()(x, nn.Identity()), x)  # 8 equal outputs: the mean is exact
    conv = nn.Conv2d(3, 2, 1)  # a 1x1 convolution commutes with flips and rotations
    with torch.no_grad():
        torch.testing.assert_close(SelfEnsembleInferer()(x, conv), conv(x), rtol=0, atol=1e-6)


def test_every_pass_gets_the_region_map_transformed_with_the_image():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 6, 10)
    regions = torch.randint(0, 5, (1, 1, 6, 10))
    net = Recorder()
    y = SelfEnsembleInferer()(x, net, regions=regions)
    assert len(net.calls) == 8
    got = {(tuple(a.reshape(-1).tolist()), tuple(r.reshape(-1).tolist())) for a, r in net.calls}
    for k in range(4):
        for flip in (False, True):
            want_x, want_r = _forward(x, k, flip), _forward(regions, k, flip)
            match = [r for a, r in net.calls if a.shape == want_x.shape and torch.equal(a, want_x)]
            assert len(match) == 1, (k, flip)
            assert match[0].dtype == torch.long and torch.equal(match[0], want_r), (k, flip)  # labels kept, exactly
    assert len(got) == 8
    assert torch.equal(y, regions.float())  # each pass's map turned back is the original map


def test_a_non_equivariant_rat_on_a_non_square_image_is_the_hand_computed_mean():
    from monai_rat.networks import RAT

    torch.manual_seed(0)
    net = RAT(feature_size=8, num_groups=1, layers_per_group=1).eval()
    x = torch.rand(1, 1, 12, 20)  # not a multiple of RAT's 16: RAT pads each pass itself
    regions = torch.randint(0, 3, (1, 1, 12, 20))
    with torch.no_grad():
        y = SelfEnsembleInferer()(x, net, regions=regions)
        plain = net(x, regions)
        expected = _by_hand(lambda a, r: net(a, r), x, regions)
    assert y.shape == x.shape
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)
    assert (y - plain).abs().max() > 1e-4  # RAT is not equivariant: the ensemble is not the plain output


def test_positional_region_maps_and_other_arguments():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 4, 6)
    regions = torch.randint(0, 3, (1, 1, 4, 6))

    def net(a, r, scale=1.0):
        return a * scale + r.float()

    y = SelfEnsembleInferer()(x, net, regions, scale=2.0)  # a positional map moves; a number passes unchanged
    torch.testing.assert_close(y, x * 2.0 + regions.float())
    with pytest.raises(ValueError, match=r"`regions` has shape \(1, 1, 4, 4\), not the image's spatial size \(4, 6\)"):
        SelfEnsembleInferer()(x, net, regions=torch.zeros(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        SelfEnsembleInferer()(torch.rand(4, 6), net)


def test_disabled_runs_the_inner_inferer_once():
    x = torch.rand(1, 1, 4, 6)
    regions = torch.zeros(1, 1, 4, 6, dtype=torch.long)
    net = Recorder()
    for off in (False, "false"):
        net.calls.clear()
        y = SelfEnsembleInferer(enabled=off)(x, net, regions=regions)
        assert len(net.calls) == 1 and torch.equal(net.calls[0][0], x) and torch.equal(y, regions.float())
    with pytest.raises(ValueError, match="self_ensemble"):
        SelfEnsembleInferer(enabled="maybe")


def test_composes_with_the_sliding_window_and_keeps_the_input_geometry():
    """x8 around the pathology route: FittedSlidingWindowInferer + ConditionRegionsNetwork, condition=regions."""
    from monai.data import MetaTensor
    from monai_rat.networks import RAT

    torch.manual_seed(0)
    rat = RAT(in_channels=2, out_channels=2, feature_size=8, num_groups=1, layers_per_group=1).eval()
    net = ConditionRegionsNetwork(rat)
    window = FittedSlidingWindowInferer(roi_size=(16, 16), sw_batch_size=2, overlap=0.25, mode="gaussian")
    affine = torch.diag(torch.tensor([0.5, 0.7, 1.0, 1.0], dtype=torch.float64))
    x = MetaTensor(torch.rand(1, 2, 20, 28), affine=affine)
    regions = torch.randint(0, 4, (1, 1, 20, 28))
    condition = regions.repeat(1, 2, 1, 1).float()  # RepeatChanneld: the map repeated over the image channels
    with torch.no_grad():
        y = SelfEnsembleInferer(window)(x, net, condition=condition)
        expected = _by_hand(lambda a, c: window(a, net, condition=c), x.as_tensor(), condition)
    assert y.shape == x.shape and isinstance(y, MetaTensor) and torch.equal(y.affine, affine)
    torch.testing.assert_close(y.as_tensor(), expected, rtol=1e-5, atol=1e-6)


def test_through_a_monai_evaluator_with_the_bundles_prepare_batch():
    """SupervisedEvaluator(inferer=SelfEnsembleInferer()) with PrepareBatchExtraInput({'regions': 'regions'})."""
    from monai.data import DataLoader
    from monai.engines import SupervisedEvaluator
    from monai.engines.utils import PrepareBatchExtraInput

    g = torch.Generator().manual_seed(0)
    items = [{"image": torch.rand(1, 6, 10, generator=g), "label": torch.rand(1, 6, 10, generator=g),
              "regions": torch.randint(0, 4, (1, 6, 10), generator=g)} for _ in range(2)]
    net = Recorder()
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=DataLoader(items, batch_size=1),
                                    network=net, inferer=SelfEnsembleInferer(),
                                    prepare_batch=PrepareBatchExtraInput({"regions": "regions"}))
    evaluator.run()
    assert len(net.calls) == 16  # 8 passes per image
    last = items[-1]
    for a, r in net.calls[8:]:
        matches = [(k, f) for f in (False, True) for k in range(4)
                   if a.shape[-2:] == _forward(last["image"], k, f).shape[-2:] and torch.equal(a[0], _forward(last["image"], k, f))]
        assert len(matches) == 1 and torch.equal(r[0], _forward(last["regions"], *matches[0]))
    pred = evaluator.state.output[0]["pred"]
    assert torch.equal(pred.as_tensor() if hasattr(pred, "as_tensor") else pred, last["regions"].float())
