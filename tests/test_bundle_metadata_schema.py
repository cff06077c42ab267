"""Every bundle's ``metadata.json`` against MONAI's bundle metadata schema (what model-zoo's CI checks).

One test validates against MONAI's own schema file, which cannot be downloaded here: a copy lives
outside the repository in ``../shared/fixtures/monai-bundle-schema/`` (skipped, naming the path, when
absent). The other checks the schema's required fields itself, so a clone without that folder still
catches a metadata file MONAI would reject.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCHEMA_NAME = "meta_schema_20240725.json"
SCHEMA = REPO.parent / "shared" / "fixtures" / "monai-bundle-schema" / SCHEMA_NAME
BUNDLES = ("ct", "pet", "pathology")

#: the schema's top-level required fields and their JSON types (meta_schema_20240725.json)
REQUIRED = {
    "schema": str, "version": str, "monai_version": str, "pytorch_version": str, "numpy_version": str,
    "required_packages_version": dict, "task": str, "description": str, "authors": str, "copyright": str,
    "network_data_format": dict,
}  # fmt: skip
#: the schema's optional typed fields
OPTIONAL = {
    "changelog": dict, "data_source": str, "data_type": str, "image_classes": str, "label_classes": str,
    "pred_classes": str, "eval_metrics": dict, "intended_use": str, "references": list, "supported_apps": dict,
}  # fmt: skip
#: a tensor argument's required fields (``$defs/tensor``) and their types
TENSOR = {"type": str, "format": str, "num_channels": int, "spatial_shape": list, "dtype": str, "value_range": list}


def _metadata(bundle: str) -> dict:
    return json.loads((REPO / "bundles" / bundle / "configs" / "metadata.json").read_text())


def _problems(meta: dict) -> list[str]:
    """What in ``meta`` breaks the schema's required fields and types (empty when it conforms)."""
    out = []
    for key, kind in {**REQUIRED, **OPTIONAL}.items():
        if key not in meta:
            if key in REQUIRED:
                out.append(f"missing {key!r}")
        elif not isinstance(meta[key], kind):
            out.append(f"{key!r} is {type(meta[key]).__name__}, not {kind.__name__}")
    if not str(meta.get("schema", "")).endswith(SCHEMA_NAME):
        out.append(f"'schema' does not name {SCHEMA_NAME}: {meta.get('schema')!r}")
    if isinstance(meta.get("references"), list) and not all(isinstance(r, str) for r in meta["references"]):
        out.append("'references' must be a list of strings")
    io = meta.get("network_data_format") if isinstance(meta.get("network_data_format"), dict) else {}
    for part in ("inputs", "outputs"):
        if not isinstance(io.get(part), dict) or not io[part]:
            out.append(f"network_data_format needs a non-empty {part!r} object")
            continue
        for name, arg in io[part].items():
            if isinstance(arg, (int, float, str, bool)):
                continue  # the schema's plain arguments
            if not isinstance(arg, dict):
                out.append(f"{part}.{name} is neither a plain value nor a tensor object")
                continue
            for key, kind in TENSOR.items():
                value = arg.get(key)
                if key not in arg:
                    out.append(f"{part}.{name} misses {key!r}")
                elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                    out.append(f"{part}.{name}.{key} is {type(value).__name__}, not {kind.__name__}")
            if isinstance(arg.get("spatial_shape"), list) and not all(isinstance(s, (str, int)) for s in arg["spatial_shape"]):
                out.append(f"{part}.{name}.spatial_shape holds something other than strings and integers")
            if isinstance(arg.get("value_range"), list) and not all(isinstance(v, (int, float)) for v in arg["value_range"]):
                out.append(f"{part}.{name}.value_range holds something other than numbers")
    return out


def _broken(meta: dict) -> dict:
    """``meta`` with one required tensor field removed: a check that accepts it checks nothing."""
    bad = copy.deepcopy(meta)
    del bad["network_data_format"]["inputs"]["image"]["dtype"]
    return bad


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_has_the_schema_required_fields(bundle):
    meta = _metadata(bundle)
    assert _problems(meta) == [], f"bundles/{bundle}/configs/metadata.json"
    assert _problems(_broken(meta)) == ["inputs.image misses 'dtype'"]
    assert "network_data_format needs a non-empty 'outputs' object" in _problems({**meta, "network_data_format": {"inputs": {}}})


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_validates_against_monai_schema(bundle):
    if not SCHEMA.is_file():
        pytest.skip(f"needs {SCHEMA}: MONAI's bundle metadata schema (outside the repository, beside the clone) is not present")
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed (MONAI's verify_metadata needs it too)")
    schema = json.loads(SCHEMA.read_text())
    with warnings.catch_warnings():  # jsonschema < 4 knows no draft 2019-09: it says so and uses its newest draft, as MONAI's does
        warnings.simplefilter("ignore", DeprecationWarning)
        validator = jsonschema.validators.validator_for(schema)(schema)
    meta = _metadata(bundle)
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(meta)]
    assert errors == [], f"bundles/{bundle}/configs/metadata.json"
    assert list(validator.iter_errors(_broken(meta))), "the schema accepted a tensor without dtype"
