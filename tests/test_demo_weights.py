"""The demo weights each bundle ships in ``models/model.pt``: documented, the demo schedule's network, and
what model-zoo's ``ci/verify_bundle.py`` checks (metadata version, ``verify_net_in_out`` and the export
from ``models/model.pt``), run on the repository's bundle folders as they are, from another directory.

The weights are what the bundle's bare demo command trains (``models/README.md`` names the command, the
seed and the file's SHA-256, which is checked here, so a re-trained file cannot slip in undocumented).
Two checks that they are trained models, not just loadable: the pathology weights beat the best classical
filter (Lanczos, chosen on validation) on the demo's held-out test tiles through the bundle's own
evaluation command, and the CT and PET weights lower the error of a simulated low-dose image through the
bundle's inference command with no checkpoint argument (what MONAI Label's bundle task runs too).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import ROOT, run_bundle, run_bundle_commands
from monai.bundle import ConfigParser
from skimage.metrics import peak_signal_noise_ratio as psnr

from monai_rat.networks.record import read_network_record

BUNDLES = ("ct", "pet", "pathology")
#: the input shape of each bundle's traced export (image channels + the region map), as its README documents
EXPORT_SHAPE = {"ct": "[1, 2, 32, 32]", "pet": "[1, 2, 32, 32]", "pathology": "[1, 4, 32, 32]"}


def weights(name: str) -> Path:
    return ROOT / "bundles" / name / "models" / "model.pt"


def demo_schedule(name: str) -> tuple[dict, int]:
    """The bundle's demo schedule and training seed, as ``train.json`` resolves them."""
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / name / "train.json"))
    parser["bundle_root"] = str(ROOT / "bundles" / name)
    parser.get_parsed_content("imports")
    return parser.get_parsed_content("schedules")["demo"], int(parser.get_parsed_content("seed"))


@pytest.mark.parametrize("name", BUNDLES)
def test_the_bundle_ships_documented_demo_weights_of_its_demo_network(name):
    ckpt = weights(name)
    assert ckpt.is_file(), f"{ckpt} is missing: the bundle ships its demo weights there (models/README.md)"
    assert ckpt.stat().st_size < 4_000_000, "demo weights are meant to be small"
    record = read_network_record(str(ckpt))
    demo, seed = demo_schedule(name)
    # the network the bare demo command builds: its width and its RAT arguments
    assert record["name"] == "rat" and record["feature_size"] == demo["feature_size"], record
    assert record["network_kwargs"] == demo.get("network_kwargs", {}).get("rat", {}), record
    readme = (ckpt.parent / "README.md").read_text()
    assert f"python -m monai.bundle run training --config_file bundles/{name}/train.json" in readme
    assert f"seed {seed}" in readme, "models/README.md must name the training seed"
    assert "demo weights" in readme.lower()
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert digest in readme, f"models/README.md does not record this file's SHA-256 {digest}: re-document it"


@pytest.fixture(scope="module")
def model_zoo_checks(tmp_path_factory) -> dict:
    """model-zoo's verify_bundle steps on each repository bundle, from an empty working directory."""
    tmp = tmp_path_factory.mktemp("verify")
    elsewhere = tmp / "cwd"
    elsewhere.mkdir()
    commands, what = [], []
    for b in BUNDLES:
        bundle = ROOT / "bundles" / b
        configs = bundle / "configs"
        common = ["--meta_file", str(configs / "metadata.json"), "--config_file", str(configs / "inference.json"),
                  "--bundle_root", str(bundle)]  # fmt: skip
        commands += [
            ["verify_net_in_out", "network_def", *common],
            ["ckpt_export", "network_export", "--filepath", str(tmp / f"{b}.ts"), "--ckpt_file", str(weights(b)),
             *common, "--use_trace", "True", "--input_shape", EXPORT_SHAPE[b]],
        ]  # fmt: skip
        what += [(b, "verify_net_in_out"), (b, "ckpt_export")]
    results = run_bundle_commands(commands, tmp / "cache", tmp / "logs", timeout=600, cwd=elsewhere)
    return {"tmp": tmp, "elsewhere": elsewhere, "results": dict(zip(what, results))}


@pytest.mark.parametrize("name", BUNDLES)
def test_model_zoo_verify_bundle_steps_pass_with_the_shipped_weights(model_zoo_checks, name):
    meta = json.loads((ROOT / "bundles" / name / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"], "model-zoo: the version must have a changelog entry"
    for step in ("verify_net_in_out", "ckpt_export"):
        r = model_zoo_checks["results"][(name, step)]
        assert r["returncode"] == 0, f"{name} {step} failed:\n{r['output'][-4000:]}"
    assert "data shape of network is verified with no error" in model_zoo_checks["results"][(name, "verify_net_in_out")]["output"]
    exported = torch.jit.load(str(model_zoo_checks["tmp"] / f"{name}.ts"))
    channels = int(json.loads(EXPORT_SHAPE[name])[1])
    x = torch.rand(1, channels - 1, 32, 32)
    regions = torch.zeros(1, 1, 32, 32)
    regions[..., 16:] = 1
    with torch.no_grad():
        assert exported(torch.cat([x, regions], 1)).shape == (1, channels - 1, 32, 32)
    assert sorted(os.listdir(model_zoo_checks["elsewhere"])) == []  # nothing written where the commands ran


def test_the_shipped_pathology_weights_beat_the_best_classical_filter_on_the_demo_test_tiles(tmp_path):
    bundle = ROOT / "bundles" / "pathology"
    run_bundle(["run", "evaluating", "--config_file", str([str(bundle / "train.json"), str(bundle / "evaluate.json")]),
                "--ckpt_path", str(weights("pathology")), "--output_dir", str(tmp_path / "out"), "--panels", "false",
                "--region_cache_dir", str(tmp_path / "regions")], tmp_path / "cache", timeout=600)  # fmt: skip
    metrics = json.loads((tmp_path / "out" / "eval" / "summary.json").read_text())["metrics"]
    best = max(metrics["bicubic_psnr"]["mean"], metrics["lanczos_psnr"]["mean"])
    # measured when the weights were made: 29.01 dB against Lanczos 28.54 dB (models/README.md)
    assert metrics["val_psnr"]["mean"] > best + 0.3, metrics


def test_the_shipped_ct_and_pet_weights_restore_through_inference_with_no_checkpoint_argument(tmp_path):
    """Inference as a user (or MONAI Label's bundle task) runs it: the bundle's own models/model.pt, read by its
    record. A quarter-dose CT slice (pydicom's real CT_small, simulated on the sinogram) and a low-count PET
    volume (OSEM of a Poisson draw at 1/12 of the counts) come out closer to their references than they went in."""
    import pydicom
    from conftest import pydicom_test_file

    from monai_rat.transforms import SimulateLowCountPET, SimulateLowDoseCT

    ds = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
    hu = (ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept))[None]
    ct_ref = np.asarray(SimulateLowDoseCT(add_noise=False)(hu))[0]
    sim = SimulateLowDoseCT(dose_fraction=0.25)
    sim.set_random_state(0)
    ct_low = np.asarray(sim(hu))[0]
    # a textured phantom: three slices of a body with two hot lesions (activity, the bundle's units)
    yy, xx = np.mgrid[:64, :64]
    body = (((yy - 32) / 26.0) ** 2 + ((xx - 32) / 22.0) ** 2 < 1).astype(np.float32)
    slices = [body * (0.6 + 0.3 * np.sin(xx / 5.0 + k)) + 2.0 * (((yy - 26) ** 2 + (xx - 28 - 2 * k) ** 2) < 25)
              for k in range(3)]  # fmt: skip
    pet = SimulateLowCountPET(output="both")
    pet.set_random_state(0)
    pet_ref, pet_low = (np.moveaxis(np.asarray(v, dtype=np.float32), 0, -1) for v in pet(np.stack(slices)))
    for name, arr in (("ct_in/slice.nii.gz", ct_low.T), ("pet_in/vol.nii.gz", pet_low)):
        (tmp_path / name).parent.mkdir()
        nib.save(nib.Nifti1Image(np.ascontiguousarray(arr, dtype=np.float32), np.eye(4)), str(tmp_path / name))
    commands = [
        ["run", "--config_file", str(ROOT / "bundles" / b / "inference.json"), "--input_path", str(tmp_path / f"{b}_in"),
         "--output_dir", str(tmp_path / f"{b}_out"), "--region_cache_dir", str(tmp_path / "regions")]
        for b in ("ct", "pet")
    ]  # fmt: skip
    results = run_bundle_commands(commands, tmp_path / "cache", tmp_path / "logs", timeout=600, cwd=tmp_path)
    for b, r in zip(("ct", "pet"), results):
        assert r["returncode"] == 0, f"{b} inference with the shipped weights failed:\n{r['output'][-4000:]}"
    ct_out = np.squeeze(nib.load(str(tmp_path / "ct_out" / "slice_rat.nii.gz")).get_fdata()).T
    assert psnr(ct_ref, ct_out, data_range=4096.0) > psnr(ct_ref, ct_low, data_range=4096.0) + 3.0
    pet_out = nib.load(str(tmp_path / "pet_out" / "vol_rat.nii.gz")).get_fdata()
    assert pet_out.shape == pet_ref.shape
    assert psnr(pet_ref, pet_out, data_range=3.0) > psnr(pet_ref, pet_low, data_range=3.0) + 1.0
