"""The one-region partition (Table 4's one-region ablation): a map of ones, R-MSA then equals global MSA."""

import numpy as np
import torch
from monai.data import MetaTensor

from monai_rat.losses import FocalRegionLoss
from monai_rat.networks import RAT
from monai_rat.transforms import RegionPartition, RegionPartitiond, SingleRegionPartition


def test_single_region_map_is_all_ones_in_the_input_type():
    img = MetaTensor(torch.rand(1, 20, 24), affine=torch.diag(torch.tensor([2.0, 3.0, 1.0, 1.0])))
    out = RegionPartition(method="single")(img)
    assert isinstance(out, MetaTensor) and tuple(out.shape) == (1, 20, 24) and out.dtype == torch.int32
    assert torch.equal(out.as_tensor(), torch.ones(1, 20, 24, dtype=torch.int32))
    assert torch.equal(out.affine, img.affine)
    vol = np.random.rand(1, 8, 9, 3).astype(np.float32)
    assert np.array_equal(SingleRegionPartition()(vol), np.ones((1, 8, 9, 3), np.int32))
    d = RegionPartitiond("image", method="single")({"image": img})
    assert torch.equal(d["regions"].as_tensor(), torch.ones(1, 20, 24, dtype=torch.int32)) and d["image"] is img


def test_single_region_makes_rat_global_and_focal_loss_plain_l1():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 32, 32)
    regions = RegionPartition(method="single")(x[0]).long()[None].expand(2, 1, 32, 32)
    rat = RAT(feature_size=8, num_groups=1, layers_per_group=1).eval()
    glob = RAT(feature_size=8, num_groups=1, layers_per_group=1, attention="global").eval()
    glob.load_state_dict(rat.state_dict())
    for m in (rat, glob):  # non-zero attention scales, so that the attention half matters
        for layer in m.middle_blks[0].layers:
            torch.nn.init.constant_(layer.lambda_ra, 0.5)
    with torch.no_grad():
        torch.testing.assert_close(rat(x, regions), glob(x, regions), atol=1e-5, rtol=1e-5)
    y = torch.rand_like(x)
    focal = FocalRegionLoss(gamma=1e-3)(x, y, regions)
    torch.testing.assert_close(focal, (1 + 1e-3) * torch.nn.functional.l1_loss(x, y), rtol=1e-5, atol=0)
