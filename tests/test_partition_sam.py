"""SAMPartition(d) end to end with small random-weight SAM models: the real SamAutomaticMaskGenerator code path."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from sam_tiny_helpers import KEEP_ALL, CallCounter, blob_image, tiny_sam
from segment_anything import SamAutomaticMaskGenerator

from monai_rat.transforms import SAMPartition, SAMPartitiond, load_sam, masks_to_regions, register_sam_model
from monai_rat.transforms.partition import intensity, sam as sam_module

TINY = "tiny_test_sam"
register_sam_model(TINY, lambda checkpoint=None: tiny_sam())
register_sam_model("tiny_test_sam_wide", lambda checkpoint=None: tiny_sam(embed_dim=48))


@pytest.fixture
def tiny_checkpoint(tmp_path):
    path = tmp_path / "tiny_sam.pth"
    torch.save(tiny_sam(seed=1).state_dict(), path)
    return path


def _contiguous(labels):
    u = np.unique(labels)
    return u[0] == 1 and np.array_equal(u, np.arange(1, u.size + 1))


def test_end_to_end_equals_generator_plus_postprocessing():
    model = tiny_sam()
    img = blob_image(48, 40)
    part = SAMPartition(model=model, window=(-1000, 500), **KEEP_ALL)
    regions = part(img)
    assert regions.shape == (1, 48, 40) and regions.dtype == np.int32
    assert _contiguous(regions)
    # the same masks straight from segment-anything's generator, post-processed by hand
    rgb = intensity.to_uint8_rgb(img, (-1000, 500))
    gen = SamAutomaticMaskGenerator(model, **KEEP_ALL)
    records = gen.generate(rgb)
    assert len(records) >= 2, "the tiny SAM should keep several masks with the thresholds at 0"
    np.testing.assert_array_equal(regions[0], masks_to_regions(records, shape=(48, 40)))
    assert regions.max() >= 2


def test_input_types_channels_and_window():
    model = tiny_sam()
    part = SAMPartition(model=model, **KEEP_ALL)
    grey = blob_image(40, 40)
    out_np = part(grey)
    out_t = part(torch.from_numpy(grey))
    meta = MetaTensor(torch.from_numpy(grey), affine=torch.diag(torch.tensor([0.7, 0.7, 1.0, 1.0])))
    out_meta = part(meta)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.int32
    assert isinstance(out_meta, MetaTensor) and torch.equal(out_meta.affine, meta.affine)
    np.testing.assert_array_equal(out_np, out_t.numpy())
    # three equal channels give the same RGB image as one channel repeated
    np.testing.assert_array_equal(part(np.repeat(grey, 3, axis=0)), out_np)
    # percentile scaling is offset- and scale-invariant: a shifted / scaled image gives the same map
    np.testing.assert_array_equal(part(grey * 3.0 + 1234.0), out_np)
    # an explicit window is not: a narrow background window saturates the blobs, and SAM sees another image
    narrow = intensity.to_uint8_rgb(grey, (-850, -750))
    assert (narrow == 255).mean() > (intensity.to_uint8_rgb(grey) == 255).mean() + 0.1
    assert not np.array_equal(SAMPartition(model=model, window=(-850, -750), **KEEP_ALL)(grey), out_np)


def test_3d_slice_by_slice_along_each_axis():
    model = tiny_sam()
    vol = np.stack([blob_image(32, 36, seed=s)[0] for s in range(3)], axis=-1)[None]  # (1, 32, 36, 3)
    part = SAMPartition(model=model, **KEEP_ALL)
    out = part(vol)
    assert out.shape == (1, 32, 36, 3) and out.dtype == np.int32
    for k in range(3):
        np.testing.assert_array_equal(out[0, :, :, k], part(vol[..., k])[0])
        assert _contiguous(out[0, :, :, k])
    vol0 = np.moveaxis(vol[:, :, :, :2], 3, 1)  # (1, 2, 32, 36): two slices along the first spatial axis
    part0 = SAMPartition(model=model, slice_axis=0, **KEEP_ALL)
    out0 = part0(vol0)
    assert out0.shape == (1, 2, 32, 36)
    np.testing.assert_array_equal(out0[0, 1], out[0, :, :, 1])


def test_batched_encoding_matches_one_by_one():
    model = tiny_sam()
    counter = CallCounter(model)
    imgs = [blob_image(40, 40, seed=s) for s in range(3)]
    one = SAMPartition(model=model, batch_size=1, **KEEP_ALL).call_batch(imgs)
    assert counter.encoder == 3
    batched = SAMPartition(model=model, batch_size=3, **KEEP_ALL).call_batch(imgs)
    assert counter.encoder == 4 and counter.encoded_images == 6  # one pass with three images
    for a, b in zip(one, batched):
        # same embeddings up to float round-off (below); the thresholded masks agree almost everywhere
        assert (a == b).mean() > 0.98
    # the batched embeddings are the ones segment-anything's own SamPredictor computes image by image
    from segment_anything import SamPredictor

    rgbs = [intensity.to_uint8_rgb(i) for i in imgs]
    presets = SAMPartition(model=model, batch_size=3, **KEEP_ALL)._encode(rgbs)
    predictor = SamPredictor(model)
    for rgb, (orig_size, input_size, feats) in zip(rgbs, presets):
        predictor.set_image(rgb)
        assert orig_size == predictor.original_size and input_size == predictor.input_size
        torch.testing.assert_close(feats, predictor.features, atol=1e-5, rtol=1e-5)


def test_checkpoint_loads_lazily_once_per_process(tiny_checkpoint, monkeypatch):
    builds = []
    register_sam_model("tiny_test_counted", lambda checkpoint=None: builds.append(1) or tiny_sam())
    monkeypatch.setattr(sam_module, "_MODELS", {})
    a = SAMPartition(model_type="tiny_test_counted", checkpoint=tiny_checkpoint, device="cpu", **KEEP_ALL)
    assert builds == []  # nothing built at construction
    img = blob_image(32, 32)
    ra = a(img)
    assert len(builds) == 1
    b = SAMPartition(model_type="tiny_test_counted", checkpoint=str(tiny_checkpoint), device="cpu", **KEEP_ALL)
    rb = b(img)
    assert len(builds) == 1 and b.model is a.model  # the second transform reuses the process's model
    np.testing.assert_array_equal(ra, rb)
    # the loaded weights are the checkpoint's (seed 1), not the builder's fresh ones (seed 0)
    ref = tiny_sam(seed=1)
    assert torch.equal(a.model.image_encoder.patch_embed.proj.weight, ref.image_encoder.patch_embed.proj.weight)
    np.testing.assert_array_equal(ra, SAMPartition(model=ref, **KEEP_ALL)(img))


def test_model_is_not_pickled_with_a_checkpoint(tiny_checkpoint):
    import pickle

    part = SAMPartition(model_type=TINY, checkpoint=tiny_checkpoint, device="cpu", **KEEP_ALL)
    part(blob_image(32, 32))
    clone = pickle.loads(pickle.dumps(part))
    assert clone._model is None and clone._generator is None
    np.testing.assert_array_equal(clone(blob_image(32, 32)), part(blob_image(32, 32)))


def test_dictionary_transform():
    model = tiny_sam()
    img = blob_image(40, 40)
    d = SAMPartitiond(keys="image", model=model, **KEEP_ALL)({"image": img, "label": 3})
    assert set(d) == {"image", "label", "regions"} and d["image"] is img
    np.testing.assert_array_equal(d["regions"], SAMPartition(model=model, **KEEP_ALL)(img))
    two = SAMPartitiond(keys=("a", "b"), regions_key=("ra", "rb"), model=model, allow_missing_keys=True, **KEEP_ALL)
    out = two({"a": img})
    assert "ra" in out and "rb" not in out
    with pytest.raises(KeyError):
        SAMPartitiond(keys="image", model=model)({"other": img})
    with pytest.raises(ValueError, match="one output name per key"):
        SAMPartitiond(keys=("a", "b"), model=model)


# -- bad input -------------------------------------------------------------------------------------------------


def test_missing_checkpoint_names_argument_and_path(tmp_path):
    missing = tmp_path / "nowhere" / "sam_vit_b_01ec64.pth"
    for call in (
        lambda: SAMPartition(checkpoint=missing),
        lambda: SAMPartitiond(keys="image", checkpoint=str(missing)),
        lambda: load_sam("vit_b", missing),
    ):
        with pytest.raises(FileNotFoundError) as err:
            call()
        assert "checkpoint" in str(err.value) and str(missing) in str(err.value)


def test_checkpoint_that_does_not_fit_model_type(tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(sam_module, "_MODELS", {})
    part = SAMPartition(model_type="tiny_test_sam_wide", checkpoint=tiny_checkpoint, device="cpu", **KEEP_ALL)
    with pytest.raises(ValueError) as err:
        part(blob_image(32, 32))
    msg = str(err.value)
    assert "tiny_test_sam_wide" in msg and str(tiny_checkpoint) in msg and "shape mismatch" in msg
    # the paper's vit_b with a tiny checkpoint: named the same way
    with pytest.raises(ValueError) as err:
        load_sam("vit_b", tiny_checkpoint, device="cpu")
    assert "'vit_b'" in str(err.value) and str(tiny_checkpoint) in str(err.value)
    # not a torch file at all
    junk = tiny_checkpoint.with_name("junk.pth")
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"{TINY}.*|junk.pth"):
        load_sam(TINY, junk, device="cpu")


def test_unknown_model_type_and_neither_or_both_sources(tiny_checkpoint):
    with pytest.raises(ValueError, match="model_type must be one of"):
        SAMPartition(model_type="vit_q", checkpoint=tiny_checkpoint)
    with pytest.raises(ValueError, match="exactly one of `checkpoint`"):
        SAMPartition()
    with pytest.raises(ValueError, match="exactly one of `checkpoint`"):
        SAMPartition(checkpoint=tiny_checkpoint, model=tiny_sam())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_image_is_a_value_error(bad):
    img = blob_image(32, 32)
    img[0, 3, 4] = bad
    with pytest.raises(ValueError, match="NaN|infinite"):
        SAMPartition(model=tiny_sam(), **KEEP_ALL)(img)


def test_wrong_shapes_are_value_errors():
    part = SAMPartition(model=tiny_sam(), **KEEP_ALL)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        part(np.zeros((2, 16, 16), np.float32))
    with pytest.raises(ValueError, match=r"\(C, H, W\) or \(C, H, W, D\)"):
        part(np.zeros((16, 16), np.float32))


def test_no_masks_gives_one_region_and_a_log_line(caplog):
    model = tiny_sam()
    counter = CallCounter(model)
    # segment-anything's default thresholds: a random-weight SAM's masks all fail them
    part = SAMPartition(model=model, points_per_side=4)
    with caplog.at_level(logging.INFO, logger="monai_rat"):
        out = part(blob_image(40, 40))
    assert counter.decoder > 0, "SAM did run"
    assert (out == 1).all()
    assert any("kept no mask" in r.getMessage() and "one region" in r.getMessage() for r in caplog.records)


def test_constant_image_is_one_region_without_running_sam(caplog):
    model = tiny_sam()
    counter = CallCounter(model)
    part = SAMPartition(model=model, **KEEP_ALL)
    with caplog.at_level(logging.INFO, logger="monai_rat"):
        out = part(np.full((1, 24, 20), -1000.0, np.float32))
        out_window = SAMPartition(model=model, window=(0, 100), **KEEP_ALL)(blob_image(24, 20) - 2000)
    assert (out == 1).all() and out.shape == (1, 24, 20)
    assert (out_window == 1).all()  # everything below the window: constant after windowing
    assert counter.total == 0
    assert any("constant image" in r.getMessage() for r in caplog.records)


def test_one_transform_shared_by_threads():
    from concurrent.futures import ThreadPoolExecutor

    part = SAMPartition(model=tiny_sam(), **KEEP_ALL)
    imgs = [blob_image(32, 32, seed=s) for s in range(4)]
    expected = [part(i) for i in imgs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(part, imgs))
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


class _SAMInWorker(torch.utils.data.Dataset):
    """Runs a cold-cache SAM partition inside a DataLoader worker and reports where SAM ran."""

    def __init__(self, checkpoint):
        self.checkpoint = checkpoint

    def __len__(self):
        return 1

    def __getitem__(self, i):
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            part = SAMPartition(model_type=TINY, checkpoint=self.checkpoint, **KEEP_ALL)
            regions = part(blob_image(32, 32))
        return {"device": str(part.model.device), "warnings": [str(w.message) for w in caught], "shape": regions.shape}


def test_sam_in_a_forked_dataloader_worker_runs_on_the_cpu_with_a_warning(tiny_checkpoint, monkeypatch):
    """With CUDA available, SAM would default to CUDA, which a forked worker cannot initialise: CPU instead, and say so."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the forked worker inherits this
    monkeypatch.setattr(sam_module, "_MODELS", {})
    assert sam_module._default_device() == torch.device("cuda")  # in the main process: CUDA when available
    loader = torch.utils.data.DataLoader(
        _SAMInWorker(tiny_checkpoint), batch_size=None, num_workers=1, multiprocessing_context="fork"
    )
    (out,) = list(loader)
    assert out["device"] == "cpu"
    assert any("running SAM on the CPU inside a DataLoader worker" in w for w in out["warnings"]), out["warnings"]
    assert tuple(out["shape"]) == (1, 32, 32)


def test_explicit_cuda_device_is_kept_where_cuda_can_work(monkeypatch):
    """In a worker that is not a bad fork (spawned), an explicit device is the user's call."""
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())
    monkeypatch.setattr(torch.cuda, "_is_in_bad_fork", lambda: False)
    assert sam_module._default_device("cuda") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "_is_in_bad_fork", lambda: True)
    with pytest.warns(RuntimeWarning, match="forked worker cannot initialise CUDA"):
        monkeypatch.setattr(sam_module, "_WARNED_WORKER", False)
        assert sam_module._default_device("cuda") == torch.device("cpu")
