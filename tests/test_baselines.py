"""The learned baselines (RED-CNN, NAFNet, Restormer, SRCNN, EDSR, RDST), ``restoration_network`` and the bundles' switch.

Networks are built tiny (width 4-8, 20-40 px) except where a test is about the paper's defaults
(parameter counts; construction only). The bundle tests run the real ``python -m monai.bundle``
commands with ``--network_name`` on the demo data: 2 training iterations per bundle, then the CT
inference command with that checkpoint.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_helpers import ROOT, TINY, run_bundle_commands
from monai.data import MetaTensor
from torch import nn

from monai_rat.engines import RegionMapNetwork
from monai_rat.engines.sliding_regions import ConditionRegionsNetwork
from monai_rat.networks import (
    EDSR,
    NAFNet,
    RAT,
    RDST,
    REDCNN,
    RESTORATION_NETWORKS,
    SRCNN,
    ImageOnly,
    PaddedRestormer,
    restoration_network,
)
from monai_rat.networks.blocks import NAFBlock

#: tiny settings per name for restoration_network (width 8 everywhere)
TINY_KWARGS = {
    "rat": dict(num_groups=1, layers_per_group=1),
    "nafnet": dict(middle_blocks=1),
    "redcnn": {},
    "restormer": dict(num_blocks=(1, 1, 1, 1), num_refinement_blocks=1),
    "srcnn": {},
    "edsr": dict(num_res_blocks=2),
    "rdst": dict(num_blocks=1, window_size=4, growth_rate=4),
}


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _tiny(name: str, channels: int = 1) -> nn.Module:
    return restoration_network(name, in_channels=channels, out_channels=channels, feature_size=8, **TINY_KWARGS[name])


def _randomise_zero_scales(module: nn.Module) -> nn.Module:
    """NAFBlock beta/gamma and RAT's lambdas start at zero (blocks are the identity): give them values."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.rsplit(".", 1)[-1] in ("beta", "gamma", "lambda_ra", "lambda_wa"):
                p.normal_(0, 0.5)
    return module


# ---------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("name", RESTORATION_NETWORKS)
@pytest.mark.parametrize("shape", [(23, 27), (37, 21)])
def test_every_network_keeps_odd_sizes_and_takes_regions(name, shape):
    net = _tiny(name, channels=3 if name in ("edsr", "srcnn") else 1).eval()
    c = 3 if name in ("edsr", "srcnn") else 1
    x = torch.rand(2, c, *shape)
    regions = torch.randint(0, 3, (2, 1, *shape))
    affine = torch.diag(torch.tensor([0.5, 0.7, 1.0, 1.0], dtype=torch.float64))
    with torch.no_grad():
        y = net(x, regions=regions)
        y_meta = net(MetaTensor(x, affine=affine, meta={"filename_or_obj": "a.png"}), regions)  # positional regions
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert type(y) is torch.Tensor  # plain in, plain out
    assert isinstance(y_meta, MetaTensor)  # MetaTensor in: the input's geometry on the output (SaveImaged, Invertd)
    assert torch.equal(y_meta.affine, affine) and y_meta.meta["filename_or_obj"] == "a.png"
    torch.testing.assert_close(y_meta.as_tensor(), y)


@pytest.mark.parametrize("shape", [(5, 7), (9, 8), (17, 30)])
def test_small_and_odd_sizes_for_the_padded_networks(shape):
    x = torch.rand(1, 1, *shape)
    for net in (NAFNet(feature_size=4, middle_blocks=1), PaddedRestormer(dim=4, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1),
                SRCNN(feature_size=4), EDSR(feature_size=4, num_res_blocks=1)):  # fmt: skip
        with torch.no_grad():
            assert net.eval()(x).shape == x.shape, type(net).__name__


def test_edsr_upscale_gives_pixel_shuffle_super_resolution():
    x = torch.rand(1, 3, 9, 11)
    for upscale in (2, 3, 4):
        net = EDSR(in_channels=3, out_channels=3, upscale=upscale, feature_size=8, num_res_blocks=1)
        assert net(x).shape == (1, 3, 9 * upscale, 11 * upscale)
        assert not net.global_residual
    shuffles = [m.upscale_factor for m in EDSR(upscale=4, feature_size=8).tail if isinstance(m, nn.PixelShuffle)]
    assert shuffles == [2, 2]
    with pytest.raises(ValueError, match="upscale must be 1, 3 or a power of 2"):
        EDSR(upscale=6)
    with pytest.raises(ValueError, match="global_residual needs upscale 1"):
        EDSR(upscale=2, global_residual=True)
    with torch.no_grad():  # another size than the input's: its affine would be wrong, so no metadata is copied
        y = ImageOnly(EDSR(in_channels=3, out_channels=3, upscale=2, feature_size=8, num_res_blocks=1))(MetaTensor(x))
    assert type(y) is torch.Tensor and y.shape == (1, 3, 18, 22)


def test_global_residuals_add_the_input():
    """With the last layer zeroed, a residual network returns its input; SRCNN without residual returns zeros."""
    x = torch.rand(1, 1, 24, 24)
    cases = [
        (EDSR(feature_size=4, num_res_blocks=1), lambda n: n.tail[-1]),
        (SRCNN(feature_size=4, global_residual=True), lambda n: n.reconstruction),
        (PaddedRestormer(dim=4, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1), lambda n: n.output.conv),
        (REDCNN(feature_size=4), lambda n: n.deconv5),
        (NAFNet(feature_size=4, middle_blocks=1), lambda n: n.ending),
    ]
    for net, last in cases:
        with torch.no_grad():
            last(net).weight.zero_()
            if last(net).bias is not None:
                last(net).bias.zero_()
            torch.testing.assert_close(net(x), x, msg=type(net).__name__)
    plain = SRCNN(feature_size=4)
    with torch.no_grad():
        plain.reconstruction.weight.zero_()
        plain.reconstruction.bias.zero_()
        assert torch.count_nonzero(plain(x)) == 0
    monai_form = PaddedRestormer(dim=4, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, global_residual=False)
    with torch.no_grad():
        monai_form.output.conv.weight.zero_()
        assert torch.count_nonzero(monai_form(x)) == 0  # MONAI's forward: no residual


def test_padded_restormer_is_monai_restormer_on_multiples():
    """Same modules and names as MONAI's class; on a multiple of 8 without residual, the same numbers."""
    from monai.networks.nets.restormer import Restormer

    cfg = dict(spatial_dims=2, in_channels=1, out_channels=1, dim=4, num_blocks=(1, 2, 1, 1), heads=(1, 2, 2, 4),
               num_refinement_blocks=1)  # fmt: skip
    ours = PaddedRestormer(**cfg, global_residual=False).eval()
    theirs = Restormer(**cfg).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.rand(1, 1, 16, 24)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


# ------------------------------------------------------------------------------------ RED-CNN structure
def test_redcnn_layers_and_parameter_count_at_paper_defaults():
    net = REDCNN()
    convs = [net.conv1, net.conv2, net.conv3, net.conv4, net.conv5]
    deconvs = [net.deconv1, net.deconv2, net.deconv3, net.deconv4, net.deconv5]
    assert all(type(m) is nn.Conv2d for m in convs) and all(type(m) is nn.ConvTranspose2d for m in deconvs)
    for m in convs + deconvs:
        assert m.kernel_size == (5, 5) and m.stride == (1, 1) and m.padding == (0, 0)
    assert [m.out_channels for m in convs + deconvs] == [96] * 9 + [1]
    assert [m.in_channels for m in convs + deconvs] == [1] + [96] * 9
    # the paper's architecture: 10 layers of 5x5 kernels, 96 filters, bias per filter
    first, hidden, last = 1 * 96 * 25 + 96, 96 * 96 * 25 + 96, 96 * 1 * 25 + 1
    assert _count(net) == first + 8 * hidden + last == 1_848_865
    assert len([m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]) == 10


def test_redcnn_shortcuts_join_maps_of_the_same_size_before_the_relu():
    net = REDCNN(feature_size=6).eval()
    seen: dict[str, torch.Tensor] = {}

    def keep(name, what):
        def hook(module, args, out):
            seen[name] = (args[0] if what == "in" else out).detach().clone()

        return hook

    for n in ("conv2", "conv4", "deconv1", "deconv3"):
        getattr(net, n).register_forward_hook(keep(n, "out"))
    for n in ("deconv2", "deconv4"):
        getattr(net, n).register_forward_hook(keep(n + "_in", "in"))
    x = torch.rand(1, 1, 30, 33)
    with torch.no_grad():
        y = net(x)
    assert seen["conv4"].shape[-2:] == (14, 17) and seen["conv2"].shape[-2:] == (22, 25)  # 4 pixels less per conv
    relu = torch.relu
    torch.testing.assert_close(seen["deconv2_in"], relu(seen["deconv1"] + relu(seen["conv4"])))
    torch.testing.assert_close(seen["deconv4_in"], relu(seen["deconv3"] + relu(seen["conv2"])))
    # the input shortcut: zero the last layer and the output is relu(x) = x for x >= 0
    with torch.no_grad():
        net.deconv5.weight.zero_()
        net.deconv5.bias.zero_()
        torch.testing.assert_close(net(x), x)
        assert (y >= 0).all()  # the paper's output ReLU
        assert (REDCNN(feature_size=6, output_relu=False)(x - 5) < 0).any()
    with pytest.raises(ValueError, match=r"H and W >= 21, got \(20, 40\)"):
        REDCNN(feature_size=4)(torch.rand(1, 1, 20, 40))


# -------------------------------------------------------------------------------------- NAFNet vs RAT
def test_nafnet_is_rats_u_shape_with_middle_nafblocks():
    torch.manual_seed(3)
    rat = RAT(feature_size=16, num_groups=2, layers_per_group=1)
    torch.manual_seed(3)
    naf = NAFNet(feature_size=16, middle_blocks=3)
    rat_sd, naf_sd = rat.state_dict(), naf.state_dict()
    outer = lambda sd: {k: tuple(v.shape) for k, v in sd.items() if not k.startswith("middle_blks.")}  # noqa: E731
    assert outer(rat_sd) == outer(naf_sd)  # same names and shapes outside the latent stage
    assert {k.split(".")[1] for k in naf_sd if k.startswith("middle_blks.")} == {"0", "1", "2"}
    # built by the same code in the same order: with the same seed the stages before the latent one are equal
    for k in naf_sd:
        if k.split(".")[0] in ("intro", "encoders", "downs"):
            torch.testing.assert_close(naf_sd[k], rat_sd[k], msg=k)
    latent = sum(p.numel() for n, p in rat.named_parameters() if n.startswith("middle_blks."))
    assert _count(naf) == _count(rat) - latent + 3 * _count(NAFBlock(64))
    # at the defaults: the paper's RAT minus its 4 latent groups plus 12 NAFBlocks of 256 channels
    full_rat = RAT()
    full_latent = sum(p.numel() for n, p in full_rat.named_parameters() if n.startswith("middle_blks."))
    assert _count(NAFBlock(256)) == 467_200
    assert _count(NAFNet()) == 15_945_025 - full_latent + 12 * 467_200 == 6_534_465


def test_nafnet_loads_rats_outer_weights_and_pads_like_rat():
    rat = _randomise_zero_scales(RAT(feature_size=8, num_groups=1, layers_per_group=1))
    naf = NAFNet(feature_size=8, middle_blocks=0)
    missing = naf.load_state_dict({k: v for k, v in rat.state_dict().items() if not k.startswith("middle_blks.")}, strict=True)
    assert not missing.missing_keys
    x = torch.rand(1, 1, 13, 22)
    xp = torch.nn.functional.pad(x, (0, 2, 0, 3), mode="reflect")  # padded to a multiple of 4 (2 levels)
    with torch.no_grad():
        torch.testing.assert_close(naf.eval()(x), naf(xp)[..., :13, :22])
    with pytest.raises(ValueError, match="middle_blocks"):
        NAFNet(middle_blocks=-1)
    with pytest.raises(ValueError, match="pad_multiple"):
        NAFNet(pad_multiple=6)


# -------------------------------------------------------------------------------- defaults and factory
def test_parameter_counts_at_paper_defaults():
    expected = {
        "rat": 15_945_025,
        "nafnet": 6_534_465,
        "redcnn": 1_848_865,
        "restormer": 26_124_052,
        "srcnn": 8_129,
        "edsr": 1_219_841,
        "rdst": 4_200_721,
    }
    assert set(expected) == set(RESTORATION_NETWORKS)
    for name, count in expected.items():
        assert _count(restoration_network(name)) == count, name
    # RGB (pathology): SRCNN's 3-channel model, and EDSR's x4 baseline = the paper's "1.5M"
    assert _count(SRCNN(in_channels=3, out_channels=3)) == 3 * 64 * 81 + 64 + 64 * 32 + 32 + 32 * 3 * 25 + 3 == 20_099
    assert _count(EDSR(in_channels=3, out_channels=3, upscale=4)) == 1_517_571


def test_factory_types_defaults_and_pass_through():
    rat = restoration_network("RAT", attention="window")
    assert type(rat) is RAT and rat.attention == "window"
    assert type(restoration_network("rat", network_kwargs={"attention": "global"})) is RAT
    for name, cls in (("nafnet", NAFNet), ("redcnn", REDCNN), ("restormer", PaddedRestormer), ("srcnn", SRCNN),
                      ("edsr", EDSR), ("rdst", RDST)):  # fmt: skip
        net = _tiny(name)
        assert type(net) is ImageOnly and type(net.network) is cls, name
    assert restoration_network("edsr", feature_size=4, num_res_blocks=1).network.upscale == 1
    rdst = restoration_network("rdst", feature_size=16, num_blocks=1)
    assert rdst.network.upscale == 1
    assert rdst.network.body[0].dense[0].layers[0].attn.num_heads == 2  # gcd(6, 16, 30)
    assert restoration_network("restormer", feature_size=8, num_blocks=(1, 1, 1, 1)).network.patch_embed.conv.out_channels == 8
    nk = restoration_network("nafnet", feature_size=8, network_kwargs={"middle_blocks": 2}, enc_blocks=(1,), dec_blocks=(1,))
    assert len(nk.network.middle_blks) == 2 and len(nk.network.encoders) == 1


def test_factory_errors_name_what_is_valid():
    with pytest.raises(ValueError, match=r"Unknown restoration network 'unet'; valid names: rat, nafnet, redcnn, restormer, srcnn, edsr, rdst"):
        restoration_network("unet")
    with pytest.raises(ValueError, match=r"REDCNN \('redcnn'\) does not take 'middle_blocks'; its arguments: feature_size, kernel_size"):
        restoration_network("redcnn", network_kwargs={"middle_blocks": 12})
    with pytest.raises(ValueError, match="given both in network_kwargs and as a keyword"):
        restoration_network("nafnet", network_kwargs={"middle_blocks": 1}, middle_blocks=2)
    with pytest.raises(ValueError, match="network_kwargs must not set 'in_channels'"):
        restoration_network("nafnet", network_kwargs={"in_channels": 3})
    with pytest.raises(ValueError, match="width of 'restormer' is given twice"):
        restoration_network("restormer", feature_size=8, network_kwargs={"dim": 16})
    with pytest.raises(ValueError, match="width of 'redcnn' is given twice"):
        restoration_network("redcnn", feature_size=8, network_kwargs={"feature_size": 16})
    with pytest.raises(ValueError, match="spatial_dims must be 2"):
        restoration_network("srcnn", spatial_dims=3)


# ------------------------------------------------------------------------------------------ trainable
@pytest.mark.parametrize("name", RESTORATION_NETWORKS)
def test_one_optimizer_step_reduces_the_loss(name):
    torch.manual_seed(1)
    net = _tiny(name).train()
    x = torch.rand(2, 1, 24, 24)
    target = torch.nn.functional.avg_pool2d(x, 3, 1, 1)  # a fixed smoothing task
    regions = torch.randint(0, 3, (2, 1, 24, 24))
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    losses = []
    for _ in range(2):
        opt.zero_grad()
        loss = torch.nn.functional.l1_loss(net(x, regions), target)
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert losses[1] < losses[0], losses


# ------------------------------------------------------------------------------------------- wrappers
def test_image_only_state_dict_is_the_bare_networks_at_any_nesting():
    bare = EDSR(feature_size=4, num_res_blocks=1)
    wrapped = ImageOnly(bare)
    assert list(wrapped.state_dict()) == list(bare.state_dict())
    other = ImageOnly(EDSR(feature_size=4, num_res_blocks=1))
    other.load_state_dict(wrapped.state_dict())  # round trip, strict
    fresh_bare = EDSR(feature_size=4, num_res_blocks=1)
    fresh_bare.load_state_dict(wrapped.state_dict())  # a wrapper's checkpoint loads into the bare network
    x = torch.rand(1, 1, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(other(x), bare(x))
        torch.testing.assert_close(fresh_bare(x), bare(x))
    # inside the inference wrappers and inside a plain container: still no 'network.' level
    for outer, prefix in ((RegionMapNetwork(wrapped), ""), (ConditionRegionsNetwork(wrapped), ""), (nn.Sequential(wrapped), "0.")):
        keys = list(outer.state_dict())
        assert keys == [prefix + k for k in bare.state_dict()], type(outer).__name__
        copy = type(outer)(ImageOnly(EDSR(feature_size=4, num_res_blocks=1))) if prefix == "" else nn.Sequential(
            ImageOnly(EDSR(feature_size=4, num_res_blocks=1)))  # fmt: skip
        copy.load_state_dict(outer.state_dict())
        torch.testing.assert_close(copy.state_dict()[prefix + "head.weight"], bare.head.weight)
    with pytest.raises(RuntimeError, match="Missing key"):
        ImageOnly(EDSR(feature_size=4, num_res_blocks=2)).load_state_dict(wrapped.state_dict())
    with pytest.raises(TypeError, match="wraps a torch.nn.Module"):
        ImageOnly(lambda x: x)


def test_inference_wrappers_run_the_baselines():
    net = _tiny("redcnn").eval()
    x = torch.rand(2, 1, 24, 26)
    with torch.no_grad():
        ref = net.network(x)
        torch.testing.assert_close(RegionMapNetwork(net, partition="single")(x), ref)
        torch.testing.assert_close(RegionMapNetwork(net, partition="channel")(torch.cat([x, torch.ones_like(x)], 1)), ref)
        torch.testing.assert_close(ConditionRegionsNetwork(net)(x, condition=torch.ones_like(x)), ref)


# ---------------------------------------------------------------------------------------- the bundles
ITER2 = [("2" if prev == "--num_iterations" else a) for prev, a in zip([None, *TINY], TINY)]  # TINY with 2 iterations


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Real bundle commands: 2-iteration trainings of a baseline per bundle, then the CT inference with it."""
    import nibabel as nib

    work = tmp_path_factory.mktemp("baselines")
    cache = work / "cache"  # MONAI_RAT_CACHE of the commands: the demo data are built there
    out = {k: work / k for k in ("ct", "pet", "pathology", "infer")}
    reg = ["--region_cache_dir", str(work / "regions")]
    commands = {
        "ct": ["run", "training", "--config_file", "bundles/ct/train.json", "--output_dir", str(out["ct"]), *reg,
               *ITER2, "--network_name", "redcnn"],
        "pet": ["run", "training", "--config_file", "bundles/pet/train.json", "--output_dir", str(out["pet"]), *reg,
                *ITER2, "--network_name", "nafnet", "--network_kwargs", "{'middle_blocks': 1}"],
        "pathology": ["run", "training", "--config_file", "bundles/pathology/train.json", "--output_dir",
                      str(out["pathology"]), *reg, *ITER2, "--network_name", "edsr", "--network_kwargs",
                      "{'num_res_blocks': 2}"],
    }  # fmt: skip
    names = list(commands)
    results = dict(zip(names, run_bundle_commands([commands[n] for n in names], cache, work / "logs", timeout=900)))
    for name, res in results.items():
        assert res["returncode"] == 0, f"{name}: {' '.join(commands[name])}\n{res['output'][-5000:]}"
    # the CT inference command on an odd-size slice of the demo's validation set, with the redcnn checkpoint
    src = work / "infer_in"
    src.mkdir()
    low = sorted(cache.glob("ct_demo_*/low_dose/phantom_vali_000.nii.gz"))[0]
    hu = np.asarray(nib.load(low).get_fdata(), dtype=np.float32)[:45, :63]
    nib.save(nib.Nifti1Image(hu, np.eye(4)), src / "odd.nii.gz")
    ckpt = str(out["ct"] / "models" / "model.pt")
    infer = ["run", "--config_file", "bundles/ct/inference.json", "--input_path", str(src), "--ckpt_path", ckpt, *reg]
    # and the pathology evaluation (ConditionRegionsNetwork + sliding windows) with the edsr checkpoint
    evaluate = ["run", "evaluating", "--config_file", "['bundles/pathology/train.json','bundles/pathology/evaluate.json']",
                "--output_dir", str(out["pathology"]), *reg, "--feature_size", "8", "--network_name", "edsr",
                "--network_kwargs", "{'num_res_blocks': 2}"]  # fmt: skip
    inf = run_bundle_commands(
        [[*infer, "--output_dir", str(out["infer"]), "--network_name", "redcnn", "--feature_size", "8"],
         [*infer, "--output_dir", str(work / "as_rat"), "--network_name", "rat"],
         [*infer, "--output_dir", str(work / "as_recorded")], evaluate],
        cache, work / "logs_infer", timeout=300,
    )  # fmt: skip
    return {"out": out, "results": results, "infer": inf, "hu": hu, "ckpt": ckpt, "work": work}


def _metric_rows(out_dir: Path) -> list[dict]:
    with open(out_dir / "logs" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    "bundle, name, kwargs, channels",
    [("ct", "redcnn", {}, 1), ("pet", "nafnet", {"middle_blocks": 1}, 1), ("pathology", "edsr", {"num_res_blocks": 2}, 3)],
)
def test_bundle_trains_the_named_network(runs, bundle, name, kwargs, channels):
    out_dir = runs["out"][bundle]
    rows = _metric_rows(out_dir)
    assert [int(r["iteration"]) for r in rows] == [2]
    assert np.isfinite(float(rows[0]["val_psnr"])) and float(rows[0]["train_loss"]) > 0
    state = torch.load(out_dir / "models" / "model.pt", weights_only=True)
    # the checkpoint is the named network's bare state dict, at the bundle's width and kwargs
    net = restoration_network(name, in_channels=channels, out_channels=channels, feature_size=8, network_kwargs=kwargs)
    assert list(state) == list(net.state_dict())
    net.load_state_dict(state)
    with pytest.raises(RuntimeError):
        RAT(in_channels=channels, out_channels=channels, feature_size=8).load_state_dict(state)
    last = torch.load(out_dir / "models" / "last.pt", weights_only=True)
    assert list(last["network"]) == list(state) and last["trainer"]["iteration"] == 2


def test_ct_inference_loads_the_baseline_checkpoint_and_only_with_its_name(runs):
    import nibabel as nib

    ok, as_rat, as_recorded, _ = runs["infer"]
    assert ok["returncode"] == 0, ok["output"][-5000:]
    written = nib.load(runs["out"]["infer"] / "odd_rat.nii.gz").get_fdata()
    assert written.shape == runs["hu"].shape
    # the same numbers as the checkpoint's RED-CNN applied in Python: HU [-1024, 3072] -> [0, 1] and back
    net = restoration_network("redcnn", feature_size=8).eval()
    net.load_state_dict(torch.load(runs["ckpt"], weights_only=True))
    with torch.no_grad():
        expected = net(torch.from_numpy((runs["hu"] + 1024.0) / 4096.0)[None, None])[0, 0].numpy() * 4096.0 - 1024.0
    np.testing.assert_allclose(written, expected, atol=0.05)
    # the checkpoint records its network: without --network_name the same RED-CNN is built ...
    assert as_recorded["returncode"] == 0, as_recorded["output"][-5000:]
    np.testing.assert_allclose(nib.load(runs["work"] / "as_recorded" / "odd_rat.nii.gz").get_fdata(), written, atol=1e-4)
    # ... and asking for RAT fails at once, saying what the checkpoint holds
    assert as_rat["returncode"] != 0
    assert "holds redcnn(feature_size=8" in as_rat["output"] and "asked for (--network_name 'rat')" in as_rat["output"]


def test_pathology_evaluation_runs_the_baseline_through_sliding_windows(runs):
    res = runs["infer"][3]
    assert res["returncode"] == 0, res["output"][-5000:]
    summary = json.loads((runs["out"]["pathology"] / "eval" / "summary.json").read_text())["metrics"]
    assert summary["val_psnr"]["n"] == summary["input_psnr"]["n"] > 0
    assert np.isfinite(summary["val_psnr"]["mean"]) and np.isfinite(summary["val_ssim"]["mean"])


def test_bare_config_network_switch_ids():
    """Each bundle's train config defaults to RAT with no extra arguments; inference reads the network from the checkpoint."""
    from monai.bundle import ConfigParser

    for bundle in ("ct", "pet", "pathology"):
        for cfg in ("train.json", "inference.json"):
            parser = ConfigParser()
            parser.read_config(str(ROOT / "bundles" / bundle / "configs" / cfg))
            if cfg == "inference.json":  # read from the checkpoint
                assert (parser.get("network_name"), parser.get("network_kwargs")) == (None, None), bundle
                continue
            assert parser.get("network_name") == "rat", bundle
            train = json.loads((ROOT / "bundles" / bundle / "configs" / "train.json").read_text())
            for schedule in ("paper", "demo"):  # a schedule may size each network (the CT demo's smaller RAT)
                parser["schedule_name"] = schedule
                expected = train["schedules"][schedule].get("network_kwargs", {}).get("rat", {})
                assert parser.get_parsed_content("network_kwargs", lazy=False) == expected, (bundle, schedule)
        assert train["schedules"]["paper"].get("network_kwargs", {}) == {}  # the paper's RAT
        assert train["schedules"]["paper"]["feature_size"] is None  # each network's paper width
    ct_net = json.loads((ROOT / "bundles" / "ct" / "configs" / "inference.json").read_text())["network_def"]["network"]
    assert ct_net["_target_"] == "monai_rat.networks.network_from_checkpoint" and "%" not in json.dumps(ct_net)
