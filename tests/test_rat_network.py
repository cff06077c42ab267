"""RAT: the paper's structure and size, any input size, region handling, reference checkpoints, errors."""

import re

import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor

from monai_rat.networks import RAT, convert_reference_state_dict

SMALL = dict(feature_size=16, num_groups=1, layers_per_group=2)


def _randomised(model):
    """Give the zero-initialised scales (lambda_*, beta, gamma) random values so every branch counts."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if re.search(r"(lambda_ra|lambda_wa|beta|gamma)$", name):
                p.normal_(0, 0.5)
    return model.eval()


def _regions(b, h, w, n=4):
    return torch.randint(0, n, (b, 1, h, w))


def test_full_size_parameter_count_matches_the_paper():
    assert sum(p.numel() for p in RAT().parameters()) == 15_945_025


def test_reference_parameter_names():
    names = set(RAT().state_dict())
    expected = {"intro.weight", "intro.bias", "ending.weight", "ending.bias", "middle_blks.3.conv.weight"}
    for lvl in range(2):
        expected |= {f"downs.{lvl}.weight", f"ups.{lvl}.0.weight"}
        for blk in range(2):
            for part in ("encoders", "decoders"):
                pre = f"{part}.{lvl}.{blk}."
                expected |= {pre + s for s in ("conv1.weight", "conv2.weight", "conv3.weight", "conv4.weight",
                                               "conv5.weight", "sca.1.weight", "norm1.weight", "norm2.bias",
                                               "beta", "gamma")}
    for g in range(4):
        for layer in range(3):
            pre = f"middle_blks.{g}.layers.{layer}."
            expected |= {pre + s for s in ("norm_ra.weight", "ra.qkv.weight", "ra.project_out.weight", "lambda_ra",
                                           "norm_ra_mlp.bias", "mlp_ra.fc1.weight", "mlp_ra.fc2.weight",
                                           "norm_wa.weight", "wa.qkv.weight", "wa.proj_out.weight", "lambda_wa",
                                           "norm_wa_mlp.weight", "mlp_wa.fc1.weight", "mlp_wa.fc2.bias")}
    assert expected <= names, sorted(expected - names)[:5]
    assert "ups.0.0.bias" not in names  # the up-sampling conv has no bias
    assert tuple(RAT().state_dict()["downs.0.weight"].shape) == (128, 64, 2, 2)
    assert tuple(RAT().state_dict()["middle_blks.0.layers.0.wa.qkv.weight"].shape) == (768, 256)


@pytest.mark.parametrize("shape", [(32, 32), (37, 50), (20, 9)])
def test_any_size_keeps_shape(shape):
    model = _randomised(RAT(**SMALL))
    x = torch.rand(2, 1, *shape)
    with torch.no_grad():
        y = model(x, _regions(2, *shape))
    assert y.shape == x.shape


def test_padding_is_reflect_for_image_and_replicate_for_regions():
    model = _randomised(RAT(**SMALL))
    x, r = torch.rand(1, 1, 20, 27), _regions(1, 20, 27)
    xp = F.pad(x, (0, 5, 0, 12), mode="reflect")
    rp = F.pad(r.float(), (0, 5, 0, 12), mode="replicate").long()
    with torch.no_grad():
        torch.testing.assert_close(model(x, r), model(xp, rp)[..., :20, :27])


def test_fast_and_reference_models_agree_outputs_and_gradients():
    fast = _randomised(RAT(**SMALL, attention_impl="fast"))
    ref = _randomised(RAT(**SMALL, attention_impl="reference"))
    ref.load_state_dict(fast.state_dict())
    x = torch.rand(3, 1, 32, 48)
    r = torch.stack([torch.randint(0, k, (1, 32, 48)) * 3 for k in (1, 4, 9)])  # different counts per image
    yf, yr = fast(x, r), ref(x, r)
    assert (yf - yr).abs().max() < 1e-4
    yf.square().mean().backward()
    yr.square().mean().backward()
    for (n, pf), (_, pr) in zip(fast.named_parameters(), ref.named_parameters()):
        assert (pf.grad - pr.grad).abs().max() < 1e-4, n


def test_regions_matter_only_at_top_left_of_each_latent_cell():
    model = _randomised(RAT(**SMALL))
    x = torch.rand(1, 1, 32, 32)
    r = torch.zeros(1, 1, 32, 32, dtype=torch.long)
    r[..., :, 16:] = 1
    off = r.clone()
    off[..., 1::4, :] = 7  # rows that are never the top-left pixel of a 4x4 cell
    on = r.clone()
    on[..., 0::4, 0:8] = 7
    with torch.no_grad():
        y = model(x, r)
        torch.testing.assert_close(model(x, off), y)
        assert (model(x, on) - y).abs().max() > 1e-4
        # the same partition with other label values gives the same output
        torch.testing.assert_close(model(x, r * 10 - 3), y)


def test_global_mode_equals_region_mode_with_one_region():
    region = _randomised(RAT(**SMALL))
    glob = RAT(**SMALL, attention="global").eval()
    glob.load_state_dict(region.state_dict())
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(region(x, torch.ones(2, 32, 32, dtype=torch.long)), glob(x))
        assert (region(x, _regions(2, 32, 32)) - glob(x)).abs().max() > 1e-4


def test_window_mode_has_window_attention_in_the_region_slot():
    model = _randomised(RAT(**SMALL, attention="window"))
    assert "middle_blks.0.layers.0.ra.proj_out.weight" in model.state_dict()
    x = torch.rand(1, 1, 24, 40)
    with torch.no_grad():
        assert model(x).shape == x.shape


def test_three_channels():
    model = _randomised(RAT(in_channels=3, out_channels=3, **SMALL))
    x = torch.rand(2, 3, 33, 33)
    with torch.no_grad():
        assert model(x, _regions(2, 33, 33)).shape == x.shape


def test_float_regions_with_integral_values_and_metatensor_inputs():
    model = _randomised(RAT(**SMALL))
    x, r = torch.rand(1, 1, 16, 16), _regions(1, 16, 16)
    with torch.no_grad():
        y = model(x, r)
        torch.testing.assert_close(model(x, r.float()), y)
        torch.testing.assert_close(model(MetaTensor(x), MetaTensor(r[:, 0].double())), y)


def test_metatensor_input_keeps_its_metadata_on_the_output():
    """A drop-in for MONAI pipelines: SaveImaged / Invertd read the output's affine; a plain input stays plain."""
    model = _randomised(RAT(**SMALL))
    affine = torch.diag(torch.tensor([0.5, 0.7, 1.0, 1.0], dtype=torch.float64))
    x = MetaTensor(torch.rand(1, 1, 20, 18), affine=affine, meta={"filename_or_obj": "slice.dcm"})
    x.applied_operations = [{"class": "Spacingd"}]
    r = _regions(1, 20, 18)
    y = model(x, r)
    assert isinstance(y, MetaTensor) and torch.equal(y.affine, affine)
    assert y.meta["filename_or_obj"] == "slice.dcm" and y.applied_operations == x.applied_operations
    assert y.requires_grad  # still on autograd's graph, so training with MetaTensor batches learns
    with torch.no_grad():
        plain = model(x.as_tensor(), r)
    assert type(plain) is torch.Tensor
    torch.testing.assert_close(y.detach().as_tensor(), plain)


def test_bad_inputs_raise_clear_errors():
    model = RAT(**SMALL)
    x = torch.rand(2, 1, 16, 16)
    with pytest.raises(ValueError, match="needs a region map"):
        model(x)
    with pytest.raises(ValueError, match="non-integral value 0.5"):
        model(x, torch.full((2, 1, 16, 16), 0.5))
    with pytest.raises(ValueError, match=r"expected shape \(2, 1, 16, 16\).*got \(2, 1, 16, 8\)"):
        model(x, torch.zeros(2, 1, 16, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"batch size 1 does not match the image batch size 2"):
        model(x, torch.zeros(1, 1, 16, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="one channel"):
        model(x, torch.zeros(2, 2, 16, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN or inf"):
        model(x, torch.full((2, 1, 16, 16), float("nan")))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, H, W\)"):
        model(torch.rand(2, 3, 16, 16), torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match="spatial_dims"):
        RAT(spatial_dims=3)
    with pytest.raises(ValueError, match="in_channels"):
        RAT(in_channels=1, out_channels=3)
    with pytest.raises(ValueError, match="attention"):
        RAT(attention="local")


def test_reference_checkpoint_loads_and_gives_the_same_outputs():
    src = _randomised(RAT(**SMALL))
    # as the reference trainer saves it: DataParallel prefixes inside a {"params": ...} container
    saved = {"params": {f"module.{k}": v.clone() for k, v in src.state_dict().items()}, "iter": 100}
    dst = RAT(**SMALL).eval()
    dst.load_state_dict(convert_reference_state_dict(saved))
    fresh = RAT(**SMALL).eval()
    fresh.load_state_dict(src.state_dict())  # bare reference names load directly
    x, r = torch.rand(1, 1, 32, 32), _regions(1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dst(x, r), src(x, r))
        torch.testing.assert_close(fresh(x, r), src(x, r))
    with pytest.raises(TypeError, match="mapping"):
        convert_reference_state_dict([1, 2])


def test_checkpointing_gives_the_same_outputs_and_gradients():
    plain = _randomised(RAT(**SMALL)).train()
    ckpt = RAT(**SMALL, use_checkpoint=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x, r = torch.rand(2, 1, 32, 32), _regions(2, 32, 32)
    y1, y2 = plain(x, r), ckpt(x, r)
    torch.testing.assert_close(y1, y2)
    y1.square().mean().backward()
    y2.square().mean().backward()
    for (n, p1), (_, p2) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, atol=1e-6, rtol=1e-5, msg=n)


@pytest.mark.parametrize("cls", ["RAT", "NAFNet"])
def test_identity_init_makes_the_untrained_network_the_identity(cls):
    import monai_rat.networks as nets

    torch.manual_seed(0)
    x = torch.rand(2, 1, 24, 40)
    regions = torch.ones(2, 1, 24, 40, dtype=torch.long)
    kwargs = dict(feature_size=8) if cls == "NAFNet" else dict(feature_size=8, num_groups=1, layers_per_group=1)
    net = getattr(nets, cls)(identity_init=True, **kwargs)
    plain = getattr(nets, cls)(**kwargs)
    args = (x, regions) if cls == "RAT" else (x,)
    with torch.no_grad():
        torch.testing.assert_close(net(*args), x)
        assert (plain(*args) - x).abs().max() > 1e-3  # the papers' initialisation is not the identity
    assert sorted(net.state_dict()) == sorted(plain.state_dict())  # same parameters, only their start differs
    # and it trains: one step moves the output away from the input
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    torch.nn.functional.l1_loss(net(*args), torch.zeros_like(x)).backward()
    opt.step()
    with torch.no_grad():
        assert (net(*args) - x).abs().max() > 1e-4
