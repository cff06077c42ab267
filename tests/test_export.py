"""Exported RAT models are exact on region maps they never saw, or refuse to export.

An export records the model's operations for one example input. The per-region R-MSA takes its
region sizes from the data as Python numbers, which a trace would bake in (a model traced on one map
and run on another was wrong by 4e-3, silently). The default ``"fast"`` R-MSA therefore switches to
its masked form while traced or exported (one attention call with a same-region mask built from the
labels inside the graph), and ``"regions"`` refuses. These tests export the bundles'
``network_export`` (``RegionMapNetwork(RAT, partition="channel")``: image channels, then the region
labels as one more channel) every documented way and compare with the eager network on five maps
the export never saw. The zero-initialised scales are randomised: with ``lambda_ra = 0`` R-MSA does
not reach the output and a wrong export would go unnoticed.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import warnings

import pytest
import torch

from bundle_helpers import run_bundle_commands
from monai_rat.engines import RegionMapNetwork
from monai_rat.networks import RAT

# tracing RAT warns that data-dependent values become constants; these tests check the traces are exact anyway
pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")

HAVE_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime", "onnxscript"))
needs_onnx = pytest.mark.skipif(
    not HAVE_ONNX, reason='ONNX export needs onnx, onnxruntime and onnxscript: pip install -e ".[export]"'
)
TOL = 1e-4  # the bound; the exported forms agree to about 1e-6


def _randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if re.search(r"(lambda_ra|lambda_wa|beta|gamma)$", name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()


def unseen_maps(b: int, h: int, w: int) -> dict[str, torch.Tensor]:
    """Five region maps (B, 1, H, W) unlike any example: counts and sizes differ, one region, many small ones."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    g = torch.Generator().manual_seed(7)
    one = torch.zeros(h, w, dtype=torch.long)
    small = (yy // 4) * 1000 + xx // 4  # one region per latent token's cell: hundreds of 1-token regions
    odd = torch.where((yy > 5) & (xx < 2 * w // 3), 9, torch.where(yy > 2 * h // 3, 2, -4))
    maps = {
        "two unequal halves": (yy < h // 3).long(),
        "one region": one,
        "many small regions": small,
        "random labels": torch.randint(0, 6, (h, w), generator=g),
        "three odd regions, negative label": odd,
    }
    out = {}
    for i, (name, m) in enumerate(maps.items()):
        batch = [m] + [list(maps.values())[(i + j) % len(maps)] for j in range(1, b)]  # images differ in a batch
        out[name] = torch.stack(batch)[:, None]
    return out


def _worst(exported, eager, x: torch.Tensor) -> dict[str, float]:
    diffs = {}
    with torch.no_grad():
        for name, regions in unseen_maps(x.shape[0], *x.shape[2:]).items():
            inp = torch.cat([x, regions.float()], 1)
            diffs[name] = float((exported(inp) - eager(x, regions)).abs().max())
    return diffs


def _ort(path):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda inp: torch.from_numpy(sess.run(None, {name: inp.numpy()})[0])


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    net = _randomised(RAT(feature_size=8, num_groups=1, layers_per_group=2))
    example = torch.cat([torch.rand(2, 1, 32, 32), torch.randint(0, 3, (2, 1, 32, 32)).float()], 1)
    return net, RegionMapNetwork(copy.deepcopy(net), partition="channel").eval(), example


def test_torchscript_trace_is_exact_on_unseen_maps_and_other_sizes(small):
    net, wrapper, example = small
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(wrapper, example, check_trace=False)
    for shape in ((1, 1, 48, 64), (3, 1, 16, 80)):  # other batch sizes and sizes than the example (multiples of 16)
        diffs = _worst(traced, net, torch.rand(*shape))
        assert max(diffs.values()) <= TOL, (shape, diffs)


def test_torchscript_trace_saves_and_loads_with_gradients_enabled(small, tmp_path):
    """Traced outside ``torch.no_grad`` (as a user may): the saved file loads and gives the same outputs."""
    net, wrapper, example = small
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(wrapper, example, check_trace=False)
    torch.jit.save(traced, str(tmp_path / "m.ts"))
    diffs = _worst(torch.jit.load(str(tmp_path / "m.ts")), net, torch.rand(1, 1, 32, 32))
    assert max(diffs.values()) <= TOL, diffs


def test_torchscript_trace_fails_loudly_on_sizes_it_cannot_handle(small):
    """H, W not a multiple of 16: the eager network pads, the trace has no padding; it must raise, not guess."""
    _, wrapper, example = small
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(wrapper, example, check_trace=False)
    with pytest.raises(RuntimeError):
        traced(torch.cat([torch.rand(1, 1, 40, 40), torch.zeros(1, 1, 40, 40)], 1))


def test_torch_export_is_exact_on_unseen_maps(small):
    net, wrapper, example = small
    program = torch.export.export(wrapper, (example,))
    diffs = _worst(program.module(), net, torch.rand(2, 1, 32, 32))
    assert max(diffs.values()) <= TOL, diffs


@needs_onnx
@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo-exporter", "torchscript-exporter"])
def test_onnx_with_onnxruntime_is_exact_on_unseen_maps(small, tmp_path, dynamo):
    net, wrapper, example = small
    path = tmp_path / "rat.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (example,), str(path), dynamo=dynamo, input_names=["image"], output_names=["pred"])
    diffs = _worst(_ort(path), net, torch.rand(*example[:, :1].shape))
    assert max(diffs.values()) <= TOL, diffs


def test_per_region_form_refuses_to_be_traced(small):
    net, _, example = small
    wrapper = RegionMapNetwork(copy.deepcopy(net).set_attention_impl("regions"), partition="channel").eval()
    with pytest.raises(RuntimeError, match="would be wrong on other region maps"):
        torch.jit.trace(wrapper, example, check_trace=False)
    with pytest.raises(RuntimeError, match="would be wrong on other region maps"):
        torch.export.export(wrapper, (example,))


# ------------------------------------------------------------------ the bundles' documented commands
BUNDLES = {  # bundle: (image channels, config file)
    "ct": (1, "bundles/ct/configs/inference.json"),
    "pet": (1, "bundles/pet/configs/inference.json"),
    "pathology": (3, "bundles/pathology/configs/inference.json"),
}
SIZE = 48  # the export's example size (multiple of 16)


@pytest.mark.parametrize("bundle", list(BUNDLES))
def test_bundle_export_routes_are_exact_on_unseen_maps(bundle, tmp_path):
    """``ckpt_export ... --use_trace True`` and ``onnx_export`` of ``network_export``, as each bundle README documents."""
    channels, config = BUNDLES[bundle]
    torch.manual_seed(1)
    net = _randomised(RAT(in_channels=channels, out_channels=channels, feature_size=8), seed=1)
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    common = ["--ckpt_file", str(ckpt), "--ckpt_path", str(ckpt), "--meta_file", config.replace("inference.json", "metadata.json"),
              "--config_file", config, "--feature_size", "8", "--input_shape", f"[1, {channels + 1}, {SIZE}, {SIZE}]"]  # fmt: skip
    commands = [["ckpt_export", "network_export", "--filepath", str(tmp_path / "model.ts"), "--use_trace", "True", *common]]
    if HAVE_ONNX:
        commands.append(["onnx_export", "network_export", "--filepath", str(tmp_path / "model.onnx"), *common])
    results = run_bundle_commands(commands, tmp_path / "cache", tmp_path / "logs", timeout=600)
    for cmd, res in zip(commands, results):
        assert res["returncode"] == 0, f"{cmd[0]} failed:\n{res['output'][-4000:]}"
    x = torch.rand(2, channels, SIZE, SIZE)
    diffs = _worst(torch.jit.load(str(tmp_path / "model.ts")), net, torch.rand(2, channels, 32, 64))
    assert max(diffs.values()) <= TOL, ("TorchScript, another size", diffs)
    diffs = _worst(torch.jit.load(str(tmp_path / "model.ts")), net, x)
    assert max(diffs.values()) <= TOL, ("TorchScript", diffs)
    if not HAVE_ONNX:
        pytest.skip('onnx_export not checked: pip install -e ".[export]" (onnx, onnxruntime, onnxscript)')
    onnx_model = _ort(tmp_path / "model.onnx")
    diffs = _worst(lambda inp: torch.cat([onnx_model(inp[i : i + 1]) for i in range(inp.shape[0])]), net, x)
    assert max(diffs.values()) <= TOL, ("ONNX (onnxruntime)", diffs)
