"""On-disk region cache: keys follow content and settings, writes are atomic, a hit never builds or runs SAM."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
import torch
from sam_tiny_helpers import KEEP_ALL, CallCounter, blob_image, tiny_sam

from monai_rat.transforms import RegionCache, SAMPartition, SuperpixelPartition, register_sam_model
from monai_rat.transforms.partition import sam as sam_module

BUILDS: list[int] = []
register_sam_model("tiny_test_cache", lambda checkpoint=None: BUILDS.append(1) or tiny_sam())


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_key_depends_on_content_and_every_setting():
    img = blob_image(16, 16)
    base = {"method": "sam", "generator": {"points_per_side": 32}, "window": None}
    k = RegionCache.key(img, base)
    assert k == RegionCache.key(img.copy(), dict(reversed(list(base.items()))))  # order of settings is irrelevant
    changed = img.copy()
    changed[0, 0, 0] += 1
    assert RegionCache.key(changed, base) != k
    assert RegionCache.key(img.astype(np.float64), base) != k  # dtype counts
    assert RegionCache.key(img.reshape(1, 8, 32), base) != k  # shape counts
    assert RegionCache.key(img, {**base, "window": [-160, 240]}) != k
    assert RegionCache.key(img, {**base, "generator": {"points_per_side": 16}}) != k


def test_sam_settings_in_the_key(tmp_path):
    model = tiny_sam()
    img = blob_image(24, 24)
    keys = {
        SAMPartition(model=model, **KEEP_ALL).cache_key(img),
        SAMPartition(model=model, **{**KEEP_ALL, "points_per_side": 2}).cache_key(img),
        SAMPartition(model=model, **{**KEEP_ALL, "pred_iou_thresh": 0.5}).cache_key(img),
        SAMPartition(model=model, window=(-160, 240), **KEEP_ALL).cache_key(img),
        SAMPartition(model=model, percentiles=(1, 99), **KEEP_ALL).cache_key(img),
        SAMPartition(model=tiny_sam(seed=5), **KEEP_ALL).cache_key(img),  # other weights
    }
    assert len(keys) == 6
    # batch and prompt batch sizes only change speed: same key
    assert SAMPartition(model=model, batch_size=4, points_per_batch=8, **KEEP_ALL).cache_key(img) in keys
    # a checkpoint is identified by its content: a copy elsewhere gives the same key, an edit another one
    a, b = tmp_path / "a.pth", tmp_path / "sub" / "b.pth"
    b.parent.mkdir()
    torch.save(model.state_dict(), a)
    b.write_bytes(a.read_bytes())
    ka = SAMPartition(model_type="tiny_test_cache", checkpoint=a, **KEEP_ALL).cache_key(img)
    assert ka == SAMPartition(model_type="tiny_test_cache", checkpoint=b, **KEEP_ALL).cache_key(img)
    torch.save(tiny_sam(seed=9).state_dict(), b)
    assert ka != SAMPartition(model_type="tiny_test_cache", checkpoint=b, **KEEP_ALL).cache_key(img)


def test_hit_never_builds_or_calls_sam(tmp_path, monkeypatch):
    ckpt = tmp_path / "tiny.pth"
    torch.save(tiny_sam().state_dict(), ckpt)
    cache = tmp_path / "cache"
    img = blob_image(32, 32)
    vol = np.stack([blob_image(32, 32, seed=s)[0] for s in (1, 2)], -1)[None]
    monkeypatch.setattr(sam_module, "_MODELS", {})
    BUILDS.clear()
    first = SAMPartition(model_type="tiny_test_cache", checkpoint=ckpt, cache_dir=cache, device="cpu", **KEEP_ALL)
    r_img, r_vol = first(img), first(vol)
    assert len(BUILDS) == 1 and first.stats == {"hits": 0, "misses": 2}
    stored = _files(cache)
    assert len([f for f in stored if f.endswith(".npy")]) == 2 and not any(".tmp" in f for f in stored)
    # a fresh process: no model in memory; every lookup is a hit, nothing is built, nothing runs
    monkeypatch.setattr(sam_module, "_MODELS", {})
    second = SAMPartition(model_type="tiny_test_cache", checkpoint=ckpt, cache_dir=cache, device="cpu", **KEEP_ALL)
    np.testing.assert_array_equal(second(img), r_img)
    np.testing.assert_array_equal(second(torch.from_numpy(vol)).numpy(), r_vol)
    assert len(BUILDS) == 1 and second._model is None and second.stats == {"hits": 2, "misses": 0}
    # with a given model: forward hooks on the real encoder and decoder count zero calls on a hit
    model = tiny_sam()
    counter = CallCounter(model)
    with_model = SAMPartition(model=model, cache_dir=tmp_path / "cache2", **KEEP_ALL)
    out = with_model(img)
    calls = counter.total
    assert calls > 0
    np.testing.assert_array_equal(SAMPartition(model=model, cache_dir=tmp_path / "cache2", **KEEP_ALL)(img), out)
    assert counter.total == calls
    # another setting misses
    SAMPartition(model=model, cache_dir=tmp_path / "cache2", window=(-900, 0), **KEEP_ALL)(img)
    assert counter.total > calls


def test_layout_and_side_file(tmp_path):
    part = SuperpixelPartition(cache_dir=tmp_path)
    img = blob_image(32, 32)
    out = part(img)
    key = part.cache_key(img)
    npy = tmp_path / key[:2] / f"{key}.npy"
    assert _files(tmp_path) == [f"{key[:2]}/{key}.json", f"{key[:2]}/{key}.npy"]
    np.testing.assert_array_equal(np.load(npy), out)
    assert '"method": "superpixel-felzenszwalb"' in npy.with_suffix(".json").read_text()


def test_unreadable_entry_is_a_miss(tmp_path, caplog):
    part = SuperpixelPartition(cache_dir=tmp_path)
    img = blob_image(32, 32)
    out = part(img)
    path = RegionCache(tmp_path).path(part.cache_key(img))
    path.write_bytes(b"garbage")
    np.testing.assert_array_equal(part(img), out)
    assert "unreadable entry" in caplog.text
    np.testing.assert_array_equal(np.load(path), out)  # rewritten


def _writer(args):
    folder, key, value, n = args
    cache = RegionCache(folder)
    for _ in range(n):
        cache.save(key, np.full((1, 256, 256), value, np.int32))
    return True


def test_concurrent_writers_leave_whole_files(tmp_path):
    key = RegionCache.key(np.zeros((1, 4, 4)), {"x": 1})
    cache = RegionCache(tmp_path)
    cache.save(key, np.full((1, 256, 256), 1, np.int32))
    ctx = mp.get_context("fork")
    with ctx.Pool(3) as pool:
        pending = pool.map_async(_writer, [(tmp_path, key, v, 30) for v in (1, 2, 3)])
        seen = set()
        while not pending.ready():
            arr = cache.load(key)  # never torn: always one writer's complete array
            assert arr is not None and arr.shape == (1, 256, 256)
            vals = np.unique(arr)
            assert vals.size == 1
            seen.add(int(vals[0]))
        assert pending.get(timeout=60) == [True] * 3
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    assert set(np.unique(cache.load(key))) <= {1, 2, 3}


def test_bad_keys_and_folder():
    with pytest.raises(ValueError, match="hex digest"):
        RegionCache("x").path("../../etc/passwd")
    with pytest.raises(ValueError, match="empty"):
        RegionCache("")
