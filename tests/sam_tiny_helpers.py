"""Small random-weight SAM models built from segment_anything.modeling, for the region-map tests."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer


def tiny_sam(img_size: int = 64, embed_dim: int = 32, depth: int = 1, seed: int = 0) -> Sam:
    """A complete SAM (ViT encoder with relative positions, prompt encoder, two-way mask decoder), a few K parameters."""
    torch.manual_seed(seed)
    patch = 16
    grid = img_size // patch
    prompt_dim = 32
    model = Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size,
            patch_size=patch,
            in_chans=3,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=2,
            mlp_ratio=2.0,
            out_chans=prompt_dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=2,
            global_attn_indexes=(depth - 1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(img_size, img_size),
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=prompt_dim, mlp_dim=64, num_heads=2),
            transformer_dim=prompt_dim,
            iou_head_depth=2,
            iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return model.eval()


#: generator settings under which a random-weight SAM keeps masks (its quality scores are meaningless)
KEEP_ALL = {"points_per_side": 3, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}


class CallCounter:
    """Counts forward passes of a SAM model's image encoder and mask decoder (real modules, forward hooks)."""

    def __init__(self, model: Sam) -> None:
        self.encoder = 0
        self.decoder = 0
        self.encoded_images = 0
        model.image_encoder.register_forward_hook(self._enc)
        model.mask_decoder.register_forward_hook(self._dec)

    def _enc(self, module, inputs, output):
        self.encoder += 1
        self.encoded_images += int(inputs[0].shape[0])

    def _dec(self, module, inputs, output):
        self.decoder += 1

    @property
    def total(self) -> int:
        return self.encoder + self.decoder


def blob_image(h: int = 48, w: int = 40, seed: int = 0, channels: int = 1, offset: float = 0.0) -> np.ndarray:
    """A (C, H, W) float image of a few bright ellipses on a textured background (HU-like range)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = rng.normal(-800.0, 20.0, size=(h, w))
    for _ in range(4):
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        ry, rx = rng.uniform(0.1, 0.3) * h, rng.uniform(0.1, 0.3) * w
        img[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = rng.uniform(-100, 400)
    img = img + offset
    return np.repeat(img[None], channels, axis=0).astype(np.float32)
