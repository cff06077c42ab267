"""SRDA: super-resolution via diagnosis-guided attention (an SR network and a ResNet-50 diagnosis network)."""

from __future__ import annotations

import torch
from torch import nn

from monai_rat.networks.blocks.spatial_attention import SpatialAttention
from monai_rat.networks.rdst import PixelShuffleUpsampler

__all__ = ["SRDA", "DiagnosisNet", "ResidualBlock", "SRDA_OUTPUTS"]

SRDA_OUTPUTS = ("all", "sr", "auto")


class ResidualBlock(nn.Module):
    """EDSR residual block: ``x + Conv3x3(ReLU(Conv3x3(x)))``.

    Args:
        channels: feature channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``(B, C, H, W)`` features.
        """
        return x + self.conv2(self.act(self.conv1(x)))


class DiagnosisNet(nn.Module):
    """SRDA's diagnosis network: torchvision's ResNet-50 (random weights, nothing downloaded) with a
    :class:`SpatialAttention` after ``conv1 -> bn1 -> relu -> maxpool`` multiplying the features, then
    ``layer1..layer4 -> global average pool -> fc`` to ``num_classes`` logits.

    ``conv1`` takes ``in_channels`` (the SR image's channels) instead of 3. The attention map has
    a quarter of the input size (``ceil(H / 4)`` x ``ceil(W / 4)``), i.e. the LR grid when the input is
    a x4 SR image.

    Args:
        in_channels: image channels.
        num_classes: diagnosis classes.

    Raises:
        ValueError: for non-positive channel or class counts.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 3) -> None:
        super().__init__()
        from torchvision.models import resnet50

        if in_channels < 1 or num_classes < 1:
            raise ValueError(f"in_channels and num_classes must be positive, got {in_channels} and {num_classes}.")
        backbone = resnet50(weights=None, num_classes=num_classes)
        if in_channels != 3:
            backbone.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(backbone.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.stem = nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool)
        self.attention = SpatialAttention(7)
        self.layers = nn.Sequential(backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)
        self.pool = backbone.avgpool
        self.fc = backbone.fc

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            x: ``(B, in_channels, H, W)`` image.

        Returns:
            ``(logits (B, num_classes), attention map (B, 1, ceil(H/4), ceil(W/4)))``.
        """
        y = self.stem(x)
        attention = self.attention(y)
        y = self.layers(y * attention)
        return self.fc(torch.flatten(self.pool(y), 1)), attention


class SRDA(nn.Module):
    """Super-Resolution via Diagnosis-guided Attention.

    SR network: deformable 3x3 convolution (torchvision ``DeformConv2d``; offsets from a 3x3 conv,
    zero-initialised so training starts from a regular convolution) -> :class:`SpatialAttention`
    multiplying the features -> ``num_res_blocks`` :class:`ResidualBlock` and a 3x3 conv, plus the
    attended features (EDSR's long skip) -> pixel-shuffle up-sampler to ``upscale`` times the input and
    3x3 conv to ``out_channels`` (``upscale=1``: that conv only).

    Diagnosis network (:class:`DiagnosisNet`, ResNet-50 with its own spatial attention after
    conv1 + max-pool) classifies the **SR output** (not the HR image): the classification loss and
    the attention loss then send gradients into the SR network, which is what makes the
    super-resolution "diagnosis-guided".

    ``forward`` returns, depending on ``output``:

    - ``"all"`` (default): a dict ``{"sr": SR image (B, out, sH, sW), "logits": (B, num_classes),
      "sr_attention": (B, 1, H, W) map of the SR network (LR grid), "diagnosis_attention":
      (B, 1, ceil(sH/4), ceil(sW/4)) map of the diagnosis network}``; at ``upscale=4`` both maps are
      on the LR grid. A dict (rather than a tuple) keeps its keys through MONAI's ``decollate_batch``.
    - ``"sr"``: the SR image tensor only (the diagnosis network is not run).
    - ``"auto"``: the dict in training mode, the SR tensor in eval mode (as MONAI's ``DynUNet`` does
      for deep supervision): ``SupervisedTrainer`` hands the dict to
      :class:`~monai_rat.losses.DiagnosisGuidedAttentionLoss` while ``SupervisedEvaluator``, metrics,
      inferers and export see a plain image prediction.

    Args:
        in_channels: image channels in.
        out_channels: image channels out (also the diagnosis network's input channels).
        upscale: 1, 2, 3, 4, 8 (a power of 2, or 3).
        feature_size: SR network width (64).
        num_res_blocks: residual blocks (32).
        num_classes: diagnosis classes (3).
        output: ``"all"``, ``"sr"`` or ``"auto"`` (see above).
        spatial_dims: must be 2.

    Raises:
        ValueError: for ``spatial_dims != 2``, non-positive sizes, an unsupported ``upscale`` or ``output``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        upscale: int = 4,
        feature_size: int = 64,
        num_res_blocks: int = 32,
        num_classes: int = 3,
        output: str = "all",
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        from torchvision.ops import DeformConv2d

        if spatial_dims != 2:
            raise ValueError(f"SRDA is a 2D network: spatial_dims must be 2, got {spatial_dims}.")
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("upscale", upscale),
            ("feature_size", feature_size),
            ("num_classes", num_classes),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not isinstance(num_res_blocks, int) or num_res_blocks < 0:
            raise ValueError(f"num_res_blocks must be a non-negative integer, got {num_res_blocks!r}.")
        if output not in SRDA_OUTPUTS:
            raise ValueError(f"output must be one of {SRDA_OUTPUTS}, got {output!r}.")
        self.in_channels = in_channels
        self.upscale = upscale
        self.output = output

        self.offset = nn.Conv2d(in_channels, 2 * 3 * 3, 3, padding=1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.deform = DeformConv2d(in_channels, feature_size, 3, padding=1)
        self.attention = SpatialAttention(7)
        self.body = nn.Sequential(
            *[ResidualBlock(feature_size) for _ in range(num_res_blocks)], nn.Conv2d(feature_size, feature_size, 3, padding=1)
        )
        if upscale == 1:
            self.tail: nn.Module = nn.Conv2d(feature_size, out_channels, 3, padding=1)
        else:
            self.tail = PixelShuffleUpsampler(feature_size, out_channels, upscale, feature_size)
        self.diagnosis = DiagnosisNet(out_channels, num_classes)

    def super_resolve(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The SR network alone.

        Args:
            x: ``(B, in_channels, H, W)`` LR image.

        Returns:
            ``(SR image (B, out_channels, sH, sW), attention map (B, 1, H, W))``.

        Raises:
            ValueError: when ``x`` is not ``(B, in_channels, H, W)``.
        """
        if hasattr(x, "as_tensor"):
            x = x.as_tensor()
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SRDA input must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}.")
        feat = self.deform(x, self.offset(x))
        attention = self.attention(feat)
        feat = feat * attention
        return self.tail(self.body(feat) + feat), attention

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor] | torch.Tensor:
        """Super-resolve ``x`` and (unless ``output`` says otherwise) diagnose the result.

        Args:
            x: ``(B, in_channels, H, W)`` LR image, any H and W.

        Raises:
            ValueError: when ``x`` is not ``(B, in_channels, H, W)``.
        """
        sr, sr_attention = self.super_resolve(x)
        if self.output == "sr" or (self.output == "auto" and not self.training):
            return sr
        logits, diagnosis_attention = self.diagnosis(sr)
        return {"sr": sr, "logits": logits, "sr_attention": sr_attention, "diagnosis_attention": diagnosis_attention}
