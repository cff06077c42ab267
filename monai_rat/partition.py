"""Precompute region maps in bulk: ``python -m monai_rat.partition`` (console script ``monai-rat-partition``).

Walks a folder of images (NIfTI, PNG, JPEG, TIFF, DICOM, MetaImage, NRRD; read with MONAI ``LoadImage``)
or the images of a MONAI datalist JSON, makes each image's region map with
:class:`monai_rat.transforms.RegionPartition` (SAM with ``--checkpoint``, superpixels otherwise),
stores it in the on-disk cache and writes it in the input's format and orientation:
``<output>/<relative path>_regions.png`` for a picture (PNG, JPEG, TIFF, BMP: a label image with the
picture's rows and columns, 8-bit when the labels fit, else 16-bit) and
``<output>/<relative path>_regions.nii.gz`` for anything else (NIfTI with the input's affine: the file's
own affine for NIfTI, the affine MONAI's reader gives for DICOM, slice position included).
A second run finds every map in the cache (resume). Under ``torchrun`` each rank takes
``items[RANK::WORLD_SIZE]``. Prints a summary with per-image times and writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["main", "find_images", "read_datalist", "output_path", "IMAGE_SUFFIXES", "PICTURE_SUFFIXES"]

logger = logging.getLogger("monai_rat.partition")

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".ima", ".mha", ".mhd", ".nrrd")
#: 2D pictures: their region maps are written as PNG label images in the picture's own orientation
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), None)


def find_images(folder: str | os.PathLike) -> list[tuple[str, str]]:
    """Images under a folder, recursively, sorted.

    Args:
        folder: the folder to walk.

    Returns:
        ``(path, name)`` pairs; ``name`` is the path relative to ``folder`` without its image suffix.

    Raises:
        FileNotFoundError: when ``folder`` is not a folder.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"input: no such folder {os.fspath(folder)!r}.")
    items = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        suffix = _suffix(path)
        if suffix is not None and not any(part.startswith(".") for part in path.relative_to(root).parts):
            rel = path.relative_to(root).as_posix()
            items.append((str(path), rel[: -len(suffix)]))
    return items


def read_datalist(path: str | os.PathLike, data_list_key: str = "training", image_key: str = "image") -> list[tuple[str, str]]:
    """Images of a MONAI (Decathlon-style) datalist JSON.

    Args:
        path: the JSON file; relative image paths are taken relative to its folder.
        data_list_key: the list to read (``"training"``, ``"validation"``, ``"test"``, ...).
        image_key: the entry of each item that holds the image path.

    Returns:
        ``(path, name)`` pairs; ``name`` is the image path relative to the JSON's folder (or its file name
        when outside it) without its image suffix.

    Raises:
        FileNotFoundError: when ``path`` is not a file.
        ValueError: when the list or an item's ``image_key`` is missing or not a single path.
    """
    from monai.data import load_decathlon_datalist

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input: no such datalist file {os.fspath(path)!r}.")
    base = path.resolve().parent
    try:
        data = load_decathlon_datalist(str(path), is_segmentation=False, data_list_key=data_list_key, base_dir=str(base))
    except ValueError as e:
        raise ValueError(f"datalist {os.fspath(path)!r}: {e}") from e
    items = []
    for i, item in enumerate(data):
        image = item.get(image_key) if isinstance(item, dict) else item
        if not isinstance(image, str):
            raise ValueError(
                f"datalist {os.fspath(path)!r}: item {i} of {data_list_key!r} needs one path under {image_key!r}, got {image!r}."
            )
        p = Path(image)
        try:
            rel = p.resolve().relative_to(base).as_posix()
        except ValueError:
            rel = p.name
        suffix = _suffix(p) or p.suffix
        items.append((str(p), rel[: -len(suffix)] if suffix else rel))
    return items


def output_path(output_dir: str | os.PathLike, name: str, input_path: str | os.PathLike | None = None) -> Path:
    """Where the region map of the image called ``name`` is written.

    Args:
        output_dir: the output folder.
        name: relative image name without suffix (from :func:`find_images` / :func:`read_datalist`).
        input_path: the image file; a picture (:data:`PICTURE_SUFFIXES`) gets a PNG map.

    Returns:
        ``<output_dir>/<name>_regions.png`` for a picture, else ``<output_dir>/<name>_regions.nii.gz``.

    Raises:
        nothing: the path is only computed, not checked.
    """
    picture = input_path is not None and _suffix(Path(input_path)) in PICTURE_SUFFIXES
    return Path(output_dir) / f"{name}_regions{'.png' if picture else '.nii.gz'}"


def _write_map(regions: Any, source: str, path: Path) -> None:
    """Write a (1, ...) map of the image ``source`` to ``path`` (PNG or NIfTI, by its suffix), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        if path.name.endswith(".png"):
            _save_png(regions, source, tmp)
        else:
            _save_nifti(regions, source, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _save_png(regions: Any, source: str, path: Path) -> None:
    """A picture's map as a PNG label image with the picture's rows and columns (8-bit, or 16-bit for > 255 labels).

    MONAI's picture readers (PIL, ITK) give ``(1, width, height)``; the map is turned back to
    ``(height, width)`` and checked against the picture's own size.
    """
    from PIL import Image

    data = np.asarray(regions)
    if data.ndim == 4 and data.shape[-1] == 1:  # a reader that adds a slice axis to a 2D picture
        data = data[..., 0]
    if data.ndim != 3 or data.shape[0] != 1:
        raise ValueError(f"{source}: a picture's region map must be (1, W, H), got shape {data.shape}.")
    data = data[0].T
    with Image.open(source) as pic:
        width, height = pic.size
    if data.shape != (height, width):
        raise ValueError(
            f"{source}: the region map is {data.shape[1]} x {data.shape[0]} (width x height) but the picture is "
            f"{width} x {height}; cannot write it in the picture's orientation."
        )
    top = int(data.max()) if data.size else 0
    if (data.size and int(data.min()) < 0) or top > 65535:
        raise ValueError(f"{source}: region labels {int(data.min())}..{top} do not fit a 16-bit PNG.")
    dtype = np.uint8 if top <= 255 else np.uint16
    Image.fromarray(np.ascontiguousarray(data.astype(dtype))).save(str(path), format="PNG")


def _save_nifti(regions: Any, source: str, path: Path) -> None:
    """The map as int32 NIfTI: a NIfTI input's own affine, else the affine MONAI's reader gave (RAS)."""
    import nibabel as nib
    from monai.data import MetaTensor

    data = np.asarray(regions, dtype=np.int32)[0]
    affine = np.eye(4)
    if _suffix(Path(source)) in (".nii", ".nii.gz"):
        src = nib.load(source)
        if tuple(src.shape[: data.ndim]) != data.shape:
            raise ValueError(f"{source}: the region map has shape {data.shape}, the image {tuple(src.shape)}.")
        affine = np.asarray(src.affine, dtype=np.float64)
    elif isinstance(regions, MetaTensor):
        a = np.asarray(regions.affine, dtype=np.float64)
        r = min(a.shape[0] - 1, 3)
        affine[:r, :r], affine[:r, 3] = a[:r, :r], a[:r, -1]
    nib.save(nib.Nifti1Image(data, affine), str(path))


def _dist() -> tuple[int, int, int]:
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world} do not make a valid shard.")
    return rank, world, local


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface.

    Returns:
        the parser of ``monai-rat-partition``.

    Raises:
        nothing: ``parse_args`` exits with status 2 on bad arguments, as argparse does.
    """
    p = argparse.ArgumentParser(
        prog="monai-rat-partition",
        description="Precompute region maps (SAM with --checkpoint, superpixels otherwise) for a folder or a datalist.",
    )
    p.add_argument("input", help="folder of images, or a MONAI datalist JSON")
    p.add_argument("-o", "--output-dir", required=True, help="where <name>_regions.png (pictures) / .nii.gz files go")
    p.add_argument("--cache-dir", default=None, help="region cache folder (default: <output-dir>/cache)")
    p.add_argument("--data-list-key", default="training", help="datalist: which list (default: training)")
    p.add_argument("--image-key", default="image", help="datalist: which entry holds the image (default: image)")
    p.add_argument("--method", choices=("auto", "sam", "superpixel"), default="auto")
    p.add_argument("--checkpoint", default=None, help="SAM checkpoint, e.g. sam_vit_b_01ec64.pth (or MONAI_RAT_SAM_CHECKPOINT)")
    p.add_argument("--model-type", default="vit_b")
    p.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK when CUDA is available, else cpu")
    p.add_argument("--points-per-side", type=int, default=32)
    p.add_argument("--points-per-batch", type=int, default=64)
    p.add_argument("--pred-iou-thresh", type=float, default=0.88)
    p.add_argument("--stability-score-thresh", type=float, default=0.95)
    p.add_argument("--batch-size", type=int, default=None, help="slices encoded together by SAM (default: 4 on CUDA, 1 on CPU)")
    p.add_argument("--superpixel-method", choices=("felzenszwalb", "slic"), default="felzenszwalb")
    p.add_argument("--window", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"), help="intensity window, e.g. -160 240 for CT in HU")
    p.add_argument("--percentiles", type=float, nargs=2, default=(0.5, 99.5), metavar=("LOW", "HIGH"))
    p.add_argument("--slice-axis", type=int, default=2, choices=(0, 1, 2), help="3D images are cut along this spatial axis")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bulk precompute.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        0 when every image of this rank's shard has a map, 1 when some failed (listed in the summary).

    Raises:
        FileNotFoundError: when the input or the checkpoint does not exist.
        ValueError: for an invalid datalist or settings, or a SAM checkpoint that cannot be read
            (checked once, before the first image) or does not fit ``--model-type`` (checked once, at
            the first image whose map is not cached).
    """
    from monai.transforms import LoadImage
    from tqdm import tqdm

    from monai_rat.transforms import RegionPartition

    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rank, world, local = _dist()
    src = Path(args.input)
    items = read_datalist(src, args.data_list_key, args.image_key) if src.is_file() else find_images(src)
    shard = items[rank::world]
    output_dir = Path(args.output_dir)
    cache_dir = Path(args.cache_dir) if args.cache_dir else output_dir / "cache"
    cuda = torch.cuda.is_available()
    device = args.device or (f"cuda:{local % max(torch.cuda.device_count(), 1)}" if cuda else "cpu")
    batch_size = args.batch_size or (4 if cuda else 1)
    partition = RegionPartition(
        method=args.method,
        checkpoint=args.checkpoint,
        model_type=args.model_type,
        device=device,
        sam_kwargs={
            "points_per_side": args.points_per_side,
            "points_per_batch": args.points_per_batch,
            "pred_iou_thresh": args.pred_iou_thresh,
            "stability_score_thresh": args.stability_score_thresh,
            "batch_size": batch_size,
        },
        superpixel_method=args.superpixel_method,
        window=args.window,
        percentiles=args.percentiles,
        slice_axis=args.slice_axis,
        cache_dir=cache_dir,
    )
    inner = partition.partitioner
    sam_unchecked = partition.method_used == "sam" and getattr(inner, "checkpoint", None) is not None
    if sam_unchecked and shard:
        _check_sam_checkpoint_file(inner)  # readable: cheap, before the first image
    loader = LoadImage(image_only=True, ensure_channel_first=True)
    logger.info(
        "rank %d/%d: %d of %d images, method %s, device %s, batch size %d, cache %s",
        rank, world, len(shard), len(items), partition.method_used, device, batch_size, cache_dir,
    )
    records: list[dict[str, Any]] = []
    started = time.perf_counter()
    bar = tqdm(total=len(shard), desc=f"regions rank {rank}/{world}", disable=args.no_progress, file=sys.stderr)
    step = batch_size if partition.method_used == "sam" else 1
    for start in range(0, len(shard), step):
        batch = shard[start : start + step]
        loaded, pending = [], []
        for path, name in batch:
            t0, c0 = time.perf_counter(), time.process_time()
            rec: dict[str, Any] = {"input": path, "output": str(output_path(output_dir, name, path))}
            try:
                img = loader(path)
                hit = inner.cached(img)
                if hit is not None:
                    from monai.utils import convert_to_dst_type

                    regions = convert_to_dst_type(hit, dst=img, dtype=torch.int32)[0]
                    if not Path(rec["output"]).is_file():
                        _write_map(regions, path, Path(rec["output"]))
                    rec.update(
                        status="cached", seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0,
                        shape=list(hit.shape[1:]), regions=int(hit.max()),
                    )
                    records.append(rec)
                    bar.update(1)
                else:
                    rec["cpu_seconds"] = time.process_time() - c0
                    loaded.append((rec, img, time.perf_counter() - t0))
            except Exception as e:  # one bad file must not stop a long run
                rec.update(status="failed", seconds=time.perf_counter() - t0, error=f"{type(e).__name__}: {e}")
                records.append(rec)
                bar.update(1)
        if loaded:
            if sam_unchecked:  # the first cache miss builds the model: a checkpoint that does not fit fails once, here
                _check_sam_checkpoint(inner)
                sam_unchecked = False
            _compute(inner, loaded, records)
            bar.update(len(loaded))
    bar.close()
    summary = _summary(records, time.perf_counter() - started, rank, world, partition.method_used, device, batch_size)
    output_dir.mkdir(parents=True, exist_ok=True)
    name = "partition_summary.json" if world == 1 else f"partition_summary_rank{rank}.json"
    (output_dir / name).write_text(json.dumps(summary, indent=1))
    _print_summary(summary)
    return 1 if summary["failed"] else 0


def _advice(inner: Any, what: str = "No image was processed") -> str:
    return (
        f"{what}: pass a SAM checkpoint of --model-type {getattr(inner, 'model_type', '?')!r} with --checkpoint (e.g. "
        "sam_vit_b_01ec64.pth for vit_b)."
    )


def _check_sam_checkpoint_file(inner: Any) -> None:
    """Open the SAM checkpoint as a PyTorch file before the first image (memory-mapped: cheap, no model built).

    A truncated or foreign file fails here, once, naming the file; before, the model was loaded on the
    first cache miss and the file was read again (and failed again) for every image, each recorded as
    a failed image. A run whose maps are all cached still builds no model.

    Raises:
        ValueError: when the file is not a readable PyTorch state dict.
    """
    path = inner.checkpoint
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated zip, not a torch file
        size = os.path.getsize(path) if os.path.isfile(path) else 0
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(
            f"--checkpoint {path!r} is not a readable PyTorch checkpoint ({size} bytes; {type(e).__name__}: {first}); it "
            f"may be truncated. {_advice(inner)}"
        ) from e
    if not isinstance(state, dict):
        raise ValueError(f"--checkpoint {path!r} holds a {type(state).__name__}, not a SAM state dict. {_advice(inner)}")


def _check_sam_checkpoint(inner: Any) -> None:
    """Load the SAM model once, at the first cache miss: a checkpoint that does not fit fails once, naming the file.

    Raises:
        FileNotFoundError: when the checkpoint file does not exist.
        ValueError: when it is not a SAM state dict of ``--model-type``.
    """
    try:
        inner.model  # noqa: B018 - loads (and memoises) the model
    except (ValueError, OSError) as e:  # load_sam's: they name the file
        kind = FileNotFoundError if isinstance(e, FileNotFoundError) else ValueError
        raise kind(f"{str(e).strip().rstrip('.')}. {_advice(inner, 'Stopped at the first map to compute')}") from e


def _compute(inner: Any, loaded: list, records: list) -> None:
    """Partition cache misses together (SAM encodes them in one batch); on an error, one by one."""
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        maps = inner.call_batch([img for _, img, _ in loaded])
    except Exception as e:
        if len(loaded) > 1:  # find the bad image, keep the good ones
            for one in loaded:
                _compute(inner, [one], records)
            return
        rec, _, t_load = loaded[0]
        rec.update(status="failed", seconds=t_load + time.perf_counter() - t0, error=f"{type(e).__name__}: {e}")
        records.append(rec)
        return
    share, cpu_share = (time.perf_counter() - t0) / len(loaded), (time.process_time() - c0) / len(loaded)
    for (rec, _, t_load), regions in zip(loaded, maps):
        t1, c1 = time.perf_counter(), time.process_time()
        try:
            _write_map(regions, rec["input"], Path(rec["output"]))
        except Exception as e:  # e.g. a picture whose map cannot be written in its orientation
            rec.update(status="failed", seconds=t_load + share + time.perf_counter() - t1, error=f"{type(e).__name__}: {e}")
            records.append(rec)
            continue
        arr = np.asarray(regions)
        rec.update(
            status="computed", seconds=t_load + share + time.perf_counter() - t1,
            cpu_seconds=rec.get("cpu_seconds", 0.0) + cpu_share + time.process_time() - c1,
            shape=list(arr.shape[1:]), regions=int(arr.max()),
        )
        records.append(rec)


def _summary(records, wall, rank, world, method, device, batch_size) -> dict[str, Any]:
    def stats(status):
        secs = [r["seconds"] for r in records if r["status"] == status]
        cpu = [r["cpu_seconds"] for r in records if r["status"] == status]
        return {
            "count": len(secs),
            "mean_s": float(np.mean(secs)) if secs else None,
            "median_s": float(np.median(secs)) if secs else None,
            "max_s": float(np.max(secs)) if secs else None,
            "mean_cpu_s": float(np.mean(cpu)) if cpu else None,
        }

    return {
        "rank": rank, "world_size": world, "method": method, "device": str(device), "batch_size": batch_size,
        "images": len(records), "computed": stats("computed"), "cached": stats("cached"),
        "failed": sum(r["status"] == "failed" for r in records), "wall_s": wall, "items": records,
    }


def _print_summary(s: dict[str, Any]) -> None:
    def line(label, st):
        if not st["count"]:
            return f"  {label:9s}: 0"
        return (
            f"  {label:9s}: {st['count']}  per image mean {st['mean_s']:.3f} s, median {st['median_s']:.3f} s, "
            f"max {st['max_s']:.3f} s (wall); mean {st['mean_cpu_s']:.3f} s CPU"
        )

    print(f"region maps, rank {s['rank']}/{s['world_size']}, method {s['method']}, device {s['device']}:")
    print(line("computed", s["computed"]))
    print(line("cached", s["cached"]))
    print(f"  failed   : {s['failed']}")
    for r in s["items"]:
        if r["status"] == "failed":
            print(f"    {r['input']}: {r['error']}")
    print(f"  wall     : {s['wall_s']:.2f} s for {s['images']} images")


if __name__ == "__main__":
    sys.exit(main())
