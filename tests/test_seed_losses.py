"""The other seed systems' losses: RDST's segmentation-based perceptual loss (frozen MONAI segmenters, hooks,
checkpoint loading) and SRDA's diagnosis-guided attention loss (formula, attention term, engine labels)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet, UNet
from torch import nn

from monai_rat.losses import DiagnosisGuidedAttentionLoss, SegmentationPerceptualLoss

# ----------------------------------------------------------------------------- segmentation perceptual loss


def tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)


def tiny_basic_unet() -> BasicUNet:
    torch.manual_seed(0)
    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(4, 4, 8, 8, 16, 4))


@pytest.mark.parametrize("make", [tiny_unet, tiny_basic_unet])
def test_perceptual_zero_for_identical_inputs(make):
    loss = SegmentationPerceptualLoss(make(), use_decoder=True, use_dice=True)
    x = torch.rand(2, 1, 32, 32)
    value = loss(x, x.clone())
    assert value.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("make", [tiny_unet, tiny_basic_unet])
def test_perceptual_gradient_reaches_sr_network_only(make):
    seg = make()
    before = {n: p.detach().clone() for n, p in seg.state_dict().items()}
    loss = SegmentationPerceptualLoss(seg, use_decoder=True, use_dice=True)
    sr_net = nn.Conv2d(1, 1, 3, padding=1)
    opt = torch.optim.SGD(list(sr_net.parameters()) + list(loss.parameters()), lr=0.1)
    value = loss(sr_net(torch.rand(2, 1, 32, 32)), torch.rand(2, 1, 32, 32))
    value.backward()
    opt.step()
    assert sr_net.weight.grad is not None and sr_net.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in seg.parameters())
    after = seg.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)  # weights and BN statistics unchanged
    assert not seg.training


def test_segmenter_stays_in_eval_mode():
    seg = tiny_unet().train()
    loss = SegmentationPerceptualLoss(seg)
    assert not seg.training
    loss.train()
    assert loss.training and not seg.training


def test_perceptual_value_matches_hand_computation():
    seg = tiny_basic_unet()
    loss = SegmentationPerceptualLoss(seg, feature_layers=("conv_0", "down_2"), use_decoder=True, alpha=0.5, lam=2.0)
    sr, hr = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    feats = {}

    def keep(name):
        return lambda m, a, o: feats.setdefault(name, []).append(o)

    hooks = [dict(seg.named_modules())[n].register_forward_hook(keep(n)) for n in ("conv_0", "down_2")]
    with torch.no_grad():
        out_sr, out_hr = seg(sr), seg(hr)
    for h in hooks:
        h.remove()
    l_u = sum((feats[n][0] - feats[n][1]).abs().mean() for n in ("conv_0", "down_2")) + (out_sr - out_hr).abs().mean()
    expected = 0.5 * (sr - hr).abs().mean() + 2.0 * l_u
    torch.testing.assert_close(loss(sr, hr), expected)
    assert loss(sr, hr, ).shape == ()
    assert SegmentationPerceptualLoss(seg, feature_layers=("conv_0",), reduction="none")(sr, hr).shape == (2,)


def test_dice_term_alone():
    seg = tiny_unet()
    loss = SegmentationPerceptualLoss(seg, feature_layers=(), use_dice=True, alpha=0.0, lam=1.0)
    sr, hr = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        p, q = seg(sr).softmax(1), seg(hr).softmax(1)
    dice = (2 * (p * q).sum((2, 3)) + 1e-5) / (p.pow(2).sum((2, 3)) + q.pow(2).sum((2, 3)) + 1e-5)
    torch.testing.assert_close(loss(sr, hr), 1 - dice.mean())
    assert 0 < loss(sr, hr) < 1


def test_lam_zero_is_l1():
    loss = SegmentationPerceptualLoss(tiny_unet(), lam=0.0)
    sr, hr = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(loss(sr, hr), F.l1_loss(sr, hr))


def test_segmenter_from_checkpoint(tmp_path):
    seg = tiny_basic_unet()
    path = tmp_path / "seg.pt"
    torch.save({"model": {f"module.{k}": v for k, v in seg.state_dict().items()}}, path)
    config = {"_target_": "monai.networks.nets.BasicUNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
              "features": [4, 4, 8, 8, 16, 4]}
    from_path = SegmentationPerceptualLoss(str(path), segmenter_config=config, use_decoder=True)
    from_module = SegmentationPerceptualLoss(seg, use_decoder=True)
    sr, hr = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(from_path(sr, hr), from_module(sr, hr))
    assert not any(p.requires_grad for p in from_path.segmenter.parameters())
    # a bundle config's nested component arrives already built
    built = SegmentationPerceptualLoss(path, segmenter_config=BasicUNet(2, 1, 2, features=(4, 4, 8, 8, 16, 4)), use_decoder=True)
    torch.testing.assert_close(built(sr, hr), from_module(sr, hr))


def test_perceptual_bad_inputs(tmp_path):
    seg = tiny_unet()
    with pytest.raises(ValueError, match=r"\['encoder9'\] are not modules.*available names: \['model', 'model.0'"):
        SegmentationPerceptualLoss(seg, feature_layers=("model.0", "encoder9"))
    with pytest.raises(ValueError, match="L_U is empty"):
        SegmentationPerceptualLoss(seg, feature_layers=())
    with pytest.raises(ValueError, match="no default feature layers for a Sequential"):
        SegmentationPerceptualLoss(nn.Sequential(nn.Conv2d(1, 2, 3)))
    with pytest.raises(ValueError, match="alpha and lam"):
        SegmentationPerceptualLoss(seg, lam=-1)
    with pytest.raises(TypeError, match="got int"):
        SegmentationPerceptualLoss(3)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        SegmentationPerceptualLoss(str(tmp_path / "missing.pt"), segmenter_config={"_target_": "monai.networks.nets.UNet"})
    torch.save(seg.state_dict(), tmp_path / "seg.pt")
    with pytest.raises(ValueError, match="needs segmenter_config"):
        SegmentationPerceptualLoss(tmp_path / "seg.pt")
    with pytest.raises(ValueError, match="does not fit monai.networks.nets.BasicUNet"):
        SegmentationPerceptualLoss(
            tmp_path / "seg.pt",
            segmenter_config={"_target_": "monai.networks.nets.BasicUNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 3},
        )
    loss = SegmentationPerceptualLoss(seg)
    with pytest.raises(ValueError, match=r"segmenter \(UNet\) cannot take an image of shape \(1, 3, 32, 32\)"):
        loss(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"same shape, got \(1, 1, 32, 32\) and \(1, 1, 8, 8\)"):
        loss(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 8, 8))


# ----------------------------------------------------------------------------- diagnosis-guided attention loss


def srda_like_output(b=2, k=3, size=(8, 8), scale=4, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    out = {
        "sr": torch.rand(b, 1, size[0] * scale, size[1] * scale, generator=g),
        "logits": torch.randn(b, k, generator=g),
        "sr_attention": torch.rand(b, 1, *size, generator=g),
        "diagnosis_attention": torch.rand(b, 1, *size, generator=g),
    }
    if requires_grad:
        for v in out.values():
            v.requires_grad_(True)
    return out


def test_diagnosis_loss_formula():
    out = srda_like_output()
    hr, y = torch.rand(2, 1, 32, 32), torch.tensor([0, 2])
    value = DiagnosisGuidedAttentionLoss(lambda1=6e-4, lambda2=1e-4)(out, hr, y)
    frob = ((out["sr_attention"] - out["diagnosis_attention"]) ** 2).sum((1, 2, 3)).mean()
    expected = F.l1_loss(out["sr"], hr) + 6e-4 * F.cross_entropy(out["logits"], y) + 1e-4 * frob
    torch.testing.assert_close(value, expected)
    per_image = DiagnosisGuidedAttentionLoss(reduction="none")(out, hr, y[:, None])
    assert per_image.shape == (2,)
    torch.testing.assert_close(per_image.mean(), value)
    torch.testing.assert_close(DiagnosisGuidedAttentionLoss(reduction="sum")(out, hr, y), per_image.sum())


def test_attention_term_zero_when_maps_equal():
    out = srda_like_output(requires_grad=True)
    out["diagnosis_attention"] = out["sr_attention"].detach().clone().requires_grad_(True)
    loss = DiagnosisGuidedAttentionLoss(lambda1=0.0, lambda2=1.0)
    hr = out["sr"].detach().clone()
    value = loss(out, hr)
    assert value.item() == 0.0
    value.backward()
    assert out["sr_attention"].grad.abs().sum() == 0


def test_attention_maps_of_different_sizes_are_resized():
    out = srda_like_output()
    out["diagnosis_attention"] = torch.full((2, 1, 3, 5), 0.25)
    out["sr_attention"] = torch.full((2, 1, 8, 8), 0.5)
    value = DiagnosisGuidedAttentionLoss(lambda1=0.0, lambda2=1.0)(out, out["sr"])
    torch.testing.assert_close(value, torch.tensor(64 * 0.25**2))


class FakeEngine:
    """What the loss reads of an ignite engine: ``state.batch`` (weak-referenceable, like an Engine)."""

    def __init__(self):
        self.state = SimpleNamespace(batch=None)


def test_diagnosis_loss_reads_labels_from_engine_batch():
    out = srda_like_output()
    hr, y = torch.rand(2, 1, 32, 32), torch.tensor([1, 2])
    loss = DiagnosisGuidedAttentionLoss()
    engine = FakeEngine()
    engine.state.batch = {"image": None, "class_label": y}
    loss.attach(engine)
    torch.testing.assert_close(loss(out, hr), loss(out, hr, y))
    engine.state.batch = [{"class_label": torch.tensor(1)}, {"class_label": torch.tensor(2)}]  # decollated
    torch.testing.assert_close(loss(out, hr), loss(out, hr, y))
    engine.state.batch = {"image": None}
    with pytest.raises(KeyError, match="'class_label'.*batch keys: \\['image'\\]"):
        loss(out, hr)


def test_lambda1_zero_needs_no_label():
    out = srda_like_output()
    DiagnosisGuidedAttentionLoss(lambda1=0.0)(out, torch.rand(2, 1, 32, 32))


def test_diagnosis_loss_bad_inputs():
    out = srda_like_output()
    hr = torch.rand(2, 1, 32, 32)
    loss = DiagnosisGuidedAttentionLoss()
    with pytest.raises(ValueError, match="class_label is required"):
        loss(out, hr)
    with pytest.raises(ValueError, match=r"in \[0, 3\), got \[0, 3\]"):
        loss(out, hr, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"shape \(2,\) or \(2, 1\), got \(3,\)"):
        loss(out, hr, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="integer classes"):
        loss(out, hr, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"same shape, got \(2, 1, 32, 32\) and \(2, 1, 16, 16\)"):
        loss(out, torch.rand(2, 1, 16, 16), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"output dict with keys.*got \['logits', 'sr'\]"):
        loss({"sr": hr, "logits": out["logits"]}, hr, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="got Tensor"):
        loss(hr, hr, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="lambda1 and lambda2 must be >= 0"):
        DiagnosisGuidedAttentionLoss(lambda1=-1)
    with pytest.raises(ValueError):
        DiagnosisGuidedAttentionLoss(reduction="max")
