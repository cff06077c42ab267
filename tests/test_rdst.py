"""RDST / RDST-E: shapes at any size, the paper's parameter counts, Swin layers against a plain reference, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from monai_rat.networks import RDST
from monai_rat.networks.blocks import DSTB, RDSTB, SwinLayer, shifted_window_mask

TINY = dict(feature_size=8, num_blocks=1, window_size=4, num_heads=2, growth_rate=4, upsample_features=8)


def reference_swin_layer(layer: SwinLayer, x: torch.Tensor) -> torch.Tensor:
    """Swin layer written out window by window with explicit softmax (the Swin paper's form)."""
    b, h, w, c = x.shape
    ws, s, heads = layer.window_size, layer.shift_size, layer.attn.num_heads
    hd = c // heads
    y = layer.norm1(x)
    if s:
        y = torch.roll(y, (-s, -s), (1, 2))
    mask = shifted_window_mask(h, w, ws, s) if s else torch.zeros(h // ws * (w // ws), ws * ws, ws * ws)
    bias = layer.attn.position_bias()
    out = torch.empty_like(y)
    for bi in range(b):
        k = 0
        for i in range(0, h, ws):
            for j in range(0, w, ws):
                t = y[bi, i : i + ws, j : j + ws].reshape(ws * ws, c)
                q, kk, v = layer.attn.qkv(t).view(ws * ws, 3, heads, hd).permute(1, 2, 0, 3)
                logits = q @ kk.transpose(-1, -2) * hd**-0.5 + bias + mask[k]
                o = (logits.softmax(-1) @ v).transpose(0, 1).reshape(ws * ws, c)
                out[bi, i : i + ws, j : j + ws] = layer.attn.proj(o).view(ws, ws, c)
                k += 1
    if s:
        out = torch.roll(out, (s, s), (1, 2))
    x = x + out
    return x + layer.mlp(layer.norm2(x))


@pytest.mark.parametrize("shift", [0, 2])
def test_swin_layer_matches_window_by_window_reference(shift):
    torch.manual_seed(0)
    layer = SwinLayer(8, num_heads=2, window_size=4, shift_size=shift)
    torch.nn.init.normal_(layer.attn.relative_position_bias_table, std=1.0)
    x = torch.randn(2, 8, 12, 8)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference_swin_layer(layer, x), atol=1e-5, rtol=1e-5)


def test_shifted_window_mask_separates_wrapped_areas():
    m = shifted_window_mask(8, 8, 4, 2)
    assert m.shape == (4, 16, 16)
    assert (m[0] == 0).all()  # top-left window: no wrap-around
    # bottom-right window holds 4 areas of 2x2 pixels; pixel (0,0) and (3,3) of it come from different areas
    assert m[3, 0, 15] == -100 and m[3, 0, 1] == 0
    assert (shifted_window_mask(8, 8, 4, 0) == 0).all()


def test_dstb_and_rdstb_widths():
    x = torch.randn(1, 4, 4, 8)
    assert DSTB(8, 4, num_heads=2, window_size=4)(x).shape == (1, 4, 4, 12)
    block = RDSTB(8, 4, num_heads=2, window_size=4)
    assert [d.bottleneck[0].in_features for d in block.dense] == [8, 12, 16]
    assert block.fusion.in_channels == 20 and block.fusion.out_channels == 8
    assert block(torch.randn(1, 8, 4, 4)).shape == (1, 8, 4, 4)


@pytest.mark.parametrize("upscale", [1, 2, 3, 4])
@pytest.mark.parametrize("size", [(16, 16), (13, 19), (3, 5)])
def test_rdst_shapes_any_size(upscale, size):
    net = RDST(spatial_dims=2, in_channels=1, out_channels=1, upscale=upscale, **TINY)
    y = net(torch.rand(2, 1, *size))
    assert y.shape == (2, 1, size[0] * upscale, size[1] * upscale)
    assert torch.isfinite(y).all()


def test_rdst_channels_and_gradients():
    net = RDST(in_channels=3, out_channels=2, upscale=2, **TINY)
    y = net(torch.rand(1, 3, 10, 9))
    assert y.shape == (1, 2, 20, 18)
    y.mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, missing


def test_rdst_same_size_adds_input():
    net = RDST(upscale=1, **TINY)
    for p in net.tail.parameters():
        torch.nn.init.zeros_(p)
    x = torch.rand(1, 1, 9, 11)
    torch.testing.assert_close(net(x), x)


@pytest.mark.parametrize(
    "num_blocks, paper",
    [(8, 4.40e6), (4, 2.35e6)],
)
def test_parameter_counts_near_paper_table1(num_blocks, paper):
    net = RDST(spatial_dims=2, in_channels=1, out_channels=1, upscale=4, num_blocks=num_blocks)
    n = sum(p.numel() for p in net.parameters())
    assert n == {8: 4_530_805, 4: 2_447_245}[num_blocks]
    assert abs(n - paper) / paper < 0.10


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(spatial_dims=3), "spatial_dims must be 2"),
        (dict(upscale=5), "power of 2 or 3"),
        (dict(upscale=0), "upscale must be a positive integer"),
        (dict(num_heads=3), r"multiple of num_heads \(3\)"),
        (dict(window_size=1), "window_size must be >= 2"),
    ],
)
def test_rdst_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RDST(**{**TINY, **kwargs})


def test_rdst_bad_input():
    net = RDST(**TINY)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\), got \(1, 2, 8, 8\)"):
        net(torch.rand(1, 2, 8, 8))
    with pytest.raises(ValueError, match=r"got \(1, 8, 8\)"):
        net(torch.rand(1, 8, 8))


def test_swin_layer_rejects_unpadded_input():
    with pytest.raises(ValueError, match="not a multiple of the window size 4"):
        SwinLayer(8, 2, 4)(torch.rand(1, 6, 8, 8))
    with pytest.raises(ValueError, match="shift_size"):
        SwinLayer(8, 2, 4, shift_size=4)


def test_rdst_accepts_metatensor_and_is_deterministic_in_eval():
    from monai.data import MetaTensor

    net = RDST(**TINY).eval()
    x = torch.rand(1, 1, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(net(MetaTensor(x)), net(x))
    assert F.l1_loss(net(x), net(x)) == 0


def test_rdst_trains_with_segmentation_perceptual_loss_in_supervised_trainer():
    from monai.data import DataLoader
    from monai.engines import SupervisedTrainer
    from monai.networks.nets import BasicUNet

    from monai_rat.losses import SegmentationPerceptualLoss

    torch.manual_seed(0)
    net = RDST(upscale=4, **TINY)
    seg = BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(4, 4, 8, 8, 16, 4))
    seg_before = {k: v.clone() for k, v in seg.state_dict().items()}
    data = [{"image": torch.rand(1, 8, 8), "label": torch.rand(1, 32, 32)} for _ in range(4)]
    head_before = net.head.weight.detach().clone()
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=DataLoader(data, batch_size=2),
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-3),
        loss_function=SegmentationPerceptualLoss(seg, use_decoder=True, use_dice=True),
    )
    trainer.run()
    assert not torch.equal(head_before, net.head.weight)
    assert all(torch.equal(seg_before[k], v) for k, v in seg.state_dict().items())
