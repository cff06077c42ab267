"""RDST's segmentation-based perceptual loss: alpha * L1 + lam * L_U, L_U from a frozen MONAI segmentation network."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.utils import LossReduction
from torch import nn
from torch.nn.modules.loss import _Loss

__all__ = ["SegmentationPerceptualLoss", "load_segmenter", "default_encoder_layers"]


def default_encoder_layers(segmenter: nn.Module) -> tuple[str, ...]:
    """The encoder blocks of MONAI's ``BasicUNet`` (``conv_0``, ``down_1`` .. ``down_4``) or ``UNet``
    (the down-sampling layer of every level and the bottom layer: ``model.0``, ``model.1.submodule.0``,
    ..., ``model.1.submodule...1.submodule``).

    Args:
        segmenter: a MONAI ``BasicUNet`` or ``UNet``.

    Raises:
        ValueError: for any other network (name its layers with ``feature_layers``).
    """
    from monai.networks.nets import BasicUNet, UNet

    if isinstance(segmenter, BasicUNet):
        return ("conv_0", "down_1", "down_2", "down_3", "down_4")
    if isinstance(segmenter, UNet):
        names, prefix, module = [], "model", segmenter.model
        while isinstance(module, nn.Sequential) and len(module) == 3:  # down, SkipConnection(submodule), up
            names.append(f"{prefix}.0")
            skip = module[1]
            if not hasattr(skip, "submodule"):
                break
            prefix, module = f"{prefix}.1.submodule", skip.submodule
        else:
            if names:
                names.append(prefix)  # the bottom (bottleneck) layer
        if not names:
            raise ValueError("could not find the encoder levels of this UNet; name them with feature_layers.")
        return tuple(names)
    raise ValueError(
        f"no default feature layers for a {type(segmenter).__name__}; pass feature_layers=(names of its "
        f"encoder blocks), e.g. from [n for n, _ in segmenter.named_modules()]."
    )


def load_segmenter(checkpoint: str | os.PathLike, network_config: Mapping | nn.Module) -> nn.Module:
    """Build a segmentation network from a MONAI-style config and load a checkpoint into it.

    Args:
        checkpoint: a ``torch.save`` file holding the state dict, or a dict holding it under ``"model"``,
            ``"network"``, ``"state_dict"`` or ``"params"`` (MONAI bundles' ``model.pt`` and
            ``CheckpointSaver`` files); ``module.`` prefixes (DataParallel/DDP) are stripped.
        network_config: e.g. ``{"_target_": "monai.networks.nets.BasicUNet", "spatial_dims": 2,
            "in_channels": 1, "out_channels": 3}``, built with ``monai.bundle.ConfigParser``; or the network
            already built (what a bundle config's nested ``_target_`` component arrives as).

    Raises:
        FileNotFoundError: when ``checkpoint`` does not exist.
        ValueError: when ``network_config`` has no ``_target_``, or the checkpoint does not fit the network.
    """
    from monai.bundle import ConfigParser

    path = os.fspath(checkpoint)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"segmenter checkpoint {path!r} does not exist.")
    if isinstance(network_config, nn.Module):
        net, target = network_config, type(network_config).__name__
    elif not isinstance(network_config, Mapping) or "_target_" not in network_config:
        raise ValueError(
            "a segmenter given as a checkpoint path needs segmenter_config, a dict with '_target_', e.g. "
            "{'_target_': 'monai.networks.nets.BasicUNet', 'spatial_dims': 2, 'in_channels': 1, 'out_channels': 3}; "
            f"got {network_config!r}."
        )
    else:
        net, target = ConfigParser(dict(network_config)).get_parsed_content(), network_config["_target_"]
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "network", "state_dict", "params"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    state = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"segmenter checkpoint {path!r} does not fit {target}: {e}") from e
    return net


class SegmentationPerceptualLoss(_Loss):
    """``alpha * L1(SR, HR) + lam * L_U``: RDST's segmentation-based perceptual loss.

    ``L_U`` compares a frozen segmentation network's view of the SR and the HR image:

    - ``L_E(i)`` (``feature_layers``): mean absolute difference of the outputs of the named modules
      (encoder blocks), taken with forward hooks, summed over the layers;
    - ``L_D`` (``use_decoder``): mean absolute difference of the segmenter's outputs (its decoder's
      logits); decoder blocks can also be named in ``feature_layers``;
    - ``L_HRL`` (``use_dice``): ``1 - Dice`` between the segmenter's predicted label maps on SR and HR.
      To be differentiable, and zero when SR equals HR, the labels are the per-class probabilities
      (softmax; sigmoid for a one-channel output) and Dice is ``2 sum(p q) / (sum p^2 + sum q^2)``
      per class (MONAI's ``squared_pred`` form), averaged over classes.

    The segmenter is frozen: every parameter has ``requires_grad=False``, it stays in eval mode (also
    after ``loss.train()``), and the HR pass runs under ``no_grad``. Gradients reach the SR image, hence
    the SR network, only. The segmenter moves to the SR image's device on first use.

    Args:
        segmenter: a MONAI segmentation network (``UNet``, ``BasicUNet``, ...), or the path of its
            checkpoint together with ``segmenter_config`` (see :func:`load_segmenter`).
        feature_layers: names (as in ``segmenter.named_modules()``) of the modules whose outputs are
            compared; ``None``: the encoder blocks of a ``BasicUNet`` or ``UNet``
            (:func:`default_encoder_layers`); ``()``: none.
        use_decoder: add ``L_D``.
        use_dice: add ``L_HRL``.
        alpha: weight of the pixel L1 term (1.0).
        lam: weight of ``L_U`` (10.0).
        segmenter_config: network config (or the built network) when ``segmenter`` is a path.
        reduction: ``"mean"`` (over the batch), ``"sum"``, or ``"none"`` (one total per image, ``(B,)``).

    Raises:
        ValueError: for unknown layer names (the available ones are listed), no ``L_U`` term selected,
            negative weights, an unknown reduction, or (in ``forward``) mismatched shapes or an image the
            segmenter cannot take (e.g. another channel count).
        TypeError: when ``segmenter`` is neither a module nor a path.
        FileNotFoundError: when a checkpoint path does not exist.
    """

    def __init__(
        self,
        segmenter: nn.Module | str | os.PathLike,
        feature_layers: Sequence[str] | None = None,
        use_decoder: bool = False,
        use_dice: bool = False,
        alpha: float = 1.0,
        lam: float = 10.0,
        segmenter_config: Mapping | None = None,
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        if isinstance(segmenter, (str, os.PathLike)):
            segmenter = load_segmenter(segmenter, segmenter_config)  # type: ignore[arg-type]
        if not isinstance(segmenter, nn.Module):
            raise TypeError(f"segmenter must be an nn.Module or a checkpoint path, got {type(segmenter).__name__}.")
        if alpha < 0 or lam < 0:
            raise ValueError(f"alpha and lam must be >= 0, got {alpha} and {lam}.")
        if feature_layers is None:
            feature_layers = default_encoder_layers(segmenter)
        if isinstance(feature_layers, str):
            feature_layers = (feature_layers,)
        modules = dict(segmenter.named_modules())
        unknown = [n for n in feature_layers if n not in modules or n == ""]
        if unknown:
            available = [n for n in modules if n]
            raise ValueError(f"feature_layers {unknown} are not modules of the segmenter; available names: {available}.")
        if not feature_layers and not use_decoder and not use_dice:
            raise ValueError("L_U is empty: give feature_layers, or set use_decoder=True or use_dice=True.")

        segmenter.eval()
        for p in segmenter.parameters():
            p.requires_grad_(False)
        self.segmenter = segmenter
        self.feature_layers = tuple(feature_layers)
        self.use_decoder = use_decoder
        self.use_dice = use_dice
        self.alpha = alpha
        self.lam = lam
        self._capture: list | None = None
        self._hooks = [modules[n].register_forward_hook(self._hook) for n in self.feature_layers]

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._capture is not None:
            self._capture.append(output[0] if isinstance(output, (list, tuple)) else output)

    def train(self, mode: bool = True) -> "SegmentationPerceptualLoss":
        """Set the loss's mode; the segmenter always stays in eval mode.

        Args:
            mode: training mode flag (has no effect on the frozen segmenter).
        """
        super().train(mode)
        self.segmenter.eval()
        return self

    def _segment(self, image: torch.Tensor) -> tuple[list, torch.Tensor]:
        self._capture = []
        try:
            out = self.segmenter(image)
        except RuntimeError as e:  # typically a channel-count mismatch between the SR image and the segmenter
            raise ValueError(
                f"the segmenter ({type(self.segmenter).__name__}) cannot take an image of shape {tuple(image.shape)}: {e}"
            ) from e
        finally:
            features, self._capture = self._capture, None
        if isinstance(out, (list, tuple)):  # deep supervision heads: the first is the full-resolution output
            out = out[0]
        return features, out

    @staticmethod
    def _probabilities(logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002 - MONAI naming
        """
        Args:
            input: ``(B, C, H, W)`` SR image (with gradient).
            target: the HR image, same shape.

        Raises:
            ValueError: when the shapes differ, or the segmenter cannot take the image.
        """
        if hasattr(input, "as_tensor"):
            input = input.as_tensor()
        if hasattr(target, "as_tensor"):
            target = target.as_tensor()
        if input.shape != target.shape:
            raise ValueError(f"input and target must have the same shape, got {tuple(input.shape)} and {tuple(target.shape)}.")
        first = next(self.segmenter.parameters(), None)
        if first is not None and first.device != input.device:
            self.segmenter.to(input.device)
        b = input.shape[0]

        def per_image(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, -1).mean(1)

        with torch.no_grad():
            feats_hr, out_hr = self._segment(target)
        feats_sr, out_sr = self._segment(input)
        l_u = input.new_zeros(b)
        for f_sr, f_hr in zip(feats_sr, feats_hr):
            l_u = l_u + per_image((f_sr - f_hr).abs())
        if self.use_decoder:
            l_u = l_u + per_image((out_sr - out_hr).abs())
        if self.use_dice:
            p, q = self._probabilities(out_sr), self._probabilities(out_hr)
            dims = tuple(range(2, p.ndim))
            eps = 1e-5
            dice = (2 * (p * q).sum(dims) + eps) / (p.pow(2).sum(dims) + q.pow(2).sum(dims) + eps)
            l_u = l_u + (1 - dice.mean(1))
        loss = self.alpha * per_image((input - target).abs()) + self.lam * l_u
        if self.reduction == LossReduction.MEAN.value:
            return loss.mean()
        if self.reduction == LossReduction.SUM.value:
            return loss.sum()
        return loss
