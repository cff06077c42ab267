"""SRDA: shapes for x4 and x1 at odd sizes, output modes for MONAI engines, zero-offset deformable conv,
the diagnosis-guided loss's gradients reaching the SR network, bad inputs. ResNet-50 is built once per SRDA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from monai_rat.losses import DiagnosisGuidedAttentionLoss
from monai_rat.networks import SRDA
from monai_rat.networks.blocks import SpatialAttention

TINY = dict(feature_size=8, num_res_blocks=1, num_classes=3)


@pytest.fixture(scope="module")
def srda4():
    torch.manual_seed(0)
    return SRDA(in_channels=1, out_channels=1, upscale=4, **TINY)


@pytest.fixture(scope="module")
def srda1():
    torch.manual_seed(0)
    return SRDA(in_channels=2, out_channels=1, upscale=1, **TINY)


def test_x4_shapes_at_odd_size(srda4):
    srda4.output = "all"
    out = srda4(torch.rand(2, 1, 13, 17))
    assert set(out) == {"sr", "logits", "sr_attention", "diagnosis_attention"}
    assert out["sr"].shape == (2, 1, 52, 68)
    assert out["logits"].shape == (2, 3)
    # at x4 the diagnosis network's map (after conv1 + max-pool, 1/4 of the SR size) is on the LR grid
    assert out["sr_attention"].shape == out["diagnosis_attention"].shape == (2, 1, 13, 17)
    for key in ("sr_attention", "diagnosis_attention"):
        assert (out[key] > 0).all() and (out[key] < 1).all()


def test_x1_shapes_and_attention_sizes(srda1):
    srda1.output = "all"
    out = srda1(torch.rand(2, 2, 15, 9))
    assert out["sr"].shape == (2, 1, 15, 9)
    assert out["sr_attention"].shape == (2, 1, 15, 9)
    assert out["diagnosis_attention"].shape == (2, 1, 4, 3)  # ceil(15/4), ceil(9/4)
    loss = DiagnosisGuidedAttentionLoss()(out, torch.rand(2, 1, 15, 9), torch.tensor([2, 0]))  # maps resized in the loss
    assert torch.isfinite(loss)


def test_output_modes_for_engines(srda4):
    x = torch.rand(2, 1, 8, 8)  # batch 2: ResNet-50's batch norm needs more than one value per channel in training
    srda4.output = "sr"
    assert isinstance(srda4(x), torch.Tensor)
    srda4.output = "auto"
    srda4.train()
    assert isinstance(srda4(x), dict)
    srda4.eval()
    y = srda4(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 1, 32, 32)
    srda4.train()
    srda4.output = "all"


def test_deformable_conv_starts_as_regular_conv(srda4):
    x = torch.rand(1, 1, 9, 11)
    assert torch.count_nonzero(srda4.offset(x)) == 0  # zero-initialised offsets
    with torch.no_grad():
        torch.testing.assert_close(srda4.deform(x, srda4.offset(x)), F.conv2d(x, srda4.deform.weight, srda4.deform.bias, padding=1))


def _grads(module):
    return {n: p.grad.abs().sum().item() if p.grad is not None else 0.0 for n, p in module.named_parameters()}


def test_classification_gradient_reaches_sr_network(srda4):
    srda4.output = "all"
    srda4.zero_grad(set_to_none=True)
    out = srda4(torch.rand(2, 1, 8, 8))
    # target = SR itself: the L1 term has zero gradient, so every SR-network gradient comes from CE through the SR image
    loss = DiagnosisGuidedAttentionLoss(lambda1=1.0, lambda2=0.0)(out, out["sr"].detach(), torch.tensor([0, 2]))
    loss.backward()
    g = _grads(srda4)
    for name in ("deform.weight", "body.0.conv1.weight", "tail.0.weight", "tail.4.weight"):
        assert g[name] > 0, name
    assert g["diagnosis.fc.weight"] > 0


def test_attention_gradient_reaches_both_attention_modules(srda4):
    srda4.output = "all"
    srda4.zero_grad(set_to_none=True)
    out = srda4(torch.rand(2, 1, 8, 8))
    DiagnosisGuidedAttentionLoss(lambda1=0.0, lambda2=1.0)(out, out["sr"].detach()).backward()
    g = _grads(srda4)
    assert g["attention.conv.weight"] > 0 and g["diagnosis.attention.conv.weight"] > 0
    assert g["deform.weight"] > 0


def test_spatial_attention_map():
    att = SpatialAttention(7)
    x = torch.randn(2, 5, 6, 7)
    w = att(x)
    assert w.shape == (2, 1, 6, 7) and ((w > 0) & (w < 1)).all()
    pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
    torch.testing.assert_close(w, torch.sigmoid(att.conv(pooled)))
    with pytest.raises(ValueError, match="odd"):
        SpatialAttention(4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(spatial_dims=3), "spatial_dims must be 2"),
        (dict(upscale=5), "power of 2 or 3"),
        (dict(output="dict"), "output must be one of"),
        (dict(num_classes=0), "num_classes must be a positive integer"),
        (dict(num_res_blocks=-1), "num_res_blocks"),
    ],
)
def test_bad_arguments(kwargs, match):
    # every check runs before the ResNet-50 is built, so these are cheap
    with pytest.raises(ValueError, match=match):
        SRDA(**{**TINY, **kwargs})


def test_bad_input(srda4):
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\), got \(1, 3, 8, 8\)"):
        srda4(torch.rand(1, 3, 8, 8))


def test_trains_and_validates_in_monai_engines(srda4):
    """output='auto' through SupervisedTrainer (dict to the loss, labels read from the batch) and
    SupervisedEvaluator (SR tensor to the metric), as the CT bundle runs it."""
    from monai.data import DataLoader
    from monai.engines import SupervisedEvaluator, SupervisedTrainer
    from monai.handlers import MeanAbsoluteError, from_engine

    data = [{"image": torch.rand(1, 8, 8), "label": torch.rand(1, 32, 32), "class_label": i % 3} for i in range(4)]
    loader = DataLoader(data, batch_size=2)
    srda4.output = "auto"
    loss = DiagnosisGuidedAttentionLoss()
    before = srda4.deform.weight.detach().clone()
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=loader,
        network=srda4,
        optimizer=torch.optim.Adam(srda4.parameters(), 1e-3),
        loss_function=loss,
        train_handlers=[loss],
    )
    trainer.run()
    assert torch.isfinite(torch.as_tensor(trainer.state.output[0]["loss"]))
    assert not torch.equal(before, srda4.deform.weight)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(data, batch_size=1),
        network=srda4,
        key_val_metric={"mae": MeanAbsoluteError(output_transform=from_engine(["pred", "label"]))},
    )
    evaluator.run()
    assert evaluator.state.metrics["mae"] > 0
    srda4.train()
    srda4.output = "all"
