"""A checkpoint records its network: round trips, MONAI's loaders still load it, and mismatches fail in one line."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine

from monai_rat.engines import CheckedCheckpointLoader, RegionMapNetwork
from monai_rat.networks import (
    NETWORK_RECORD_KEY,
    CheckpointMismatchError,
    network_from_checkpoint,
    read_network_record,
    restoration_network,
)
from monai_rat.utils import as_flag


@pytest.mark.parametrize("name, kwargs", [("rat", {}), ("redcnn", {}), ("nafnet", {"middle_blocks": 1})])
def test_record_round_trips_through_files_and_wrappers(tmp_path, name, kwargs):
    import monai_rat

    net = restoration_network(name, feature_size=8, network_kwargs=kwargs)
    record = read_network_record(net.state_dict())
    assert record == {"name": name, "spatial_dims": 2, "in_channels": 1, "out_channels": 1, "feature_size": 8,
                      "network_kwargs": kwargs, "monai_rat_version": monai_rat.__version__}  # fmt: skip
    # the same state dict keys and tensors as before; the record sits in PyTorch's metadata
    assert NETWORK_RECORD_KEY in net.state_dict()._metadata[""] and NETWORK_RECORD_KEY not in net.state_dict()
    # a wrapper keeps it at its top (the wrapper's state dict is the bare network's)
    wrapped = RegionMapNetwork(net)
    assert read_network_record(wrapped.state_dict()) == record and list(wrapped.state_dict()) == list(net.state_dict())
    # a file, also nested as last.pt's "network" entry
    torch.save(net.state_dict(), tmp_path / "model.pt")
    torch.save({"network": net.state_dict(), "optimizer": {}}, tmp_path / "last.pt")
    assert read_network_record(tmp_path / "model.pt") == record == read_network_record(tmp_path / "last.pt")
    # the checkpoint alone rebuilds the network, which loads it strictly
    rebuilt = network_from_checkpoint(tmp_path / "model.pt")
    rebuilt.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    assert type(rebuilt) is type(net)


def test_monai_tools_load_a_recorded_checkpoint(tmp_path):
    from monai.handlers import CheckpointLoader
    from monai.networks.utils import copy_model_state

    net = restoration_network("rat", feature_size=8)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    other = restoration_network("rat", feature_size=8)
    CheckpointLoader(str(tmp_path / "model.pt"), {"model": other})(Engine(lambda e, b: None))
    for k, v in net.state_dict().items():
        torch.testing.assert_close(other.state_dict()[k], v)
    # ckpt_export's copy (MONAI's copy_model_state) and a plain strict load_state_dict
    third = restoration_network("rat", feature_size=8)
    _, updated, unchanged = copy_model_state(third, torch.load(tmp_path / "model.pt", weights_only=True))
    assert not unchanged and len(updated) == len(net.state_dict())
    torch.nn.Module.load_state_dict(restoration_network("rat", feature_size=8), torch.load(tmp_path / "model.pt"))


def test_explicit_arguments_must_agree_with_the_record(tmp_path):
    torch.save(restoration_network("redcnn", feature_size=8).state_dict(), tmp_path / "model.pt")
    assert read_network_record(network_from_checkpoint(tmp_path / "model.pt", name="redcnn", feature_size=8).state_dict())["name"] == "redcnn"
    with pytest.raises(CheckpointMismatchError, match=r"holds redcnn\(feature_size=8.*does not fit the network asked for \(--feature_size 16\).*pass --feature_size 8"):
        network_from_checkpoint(tmp_path / "model.pt", feature_size=16)
    with pytest.raises(CheckpointMismatchError, match=r"asked for \(--network_name 'rat'\).*pass --network_name 'redcnn'"):
        network_from_checkpoint(tmp_path / "model.pt", name="rat")
    with pytest.raises(CheckpointMismatchError, match="--in_channels 3"):
        network_from_checkpoint(tmp_path / "model.pt", in_channels=3, out_channels=3)
    # no file yet, or an old checkpoint without a record: the arguments decide
    assert network_from_checkpoint(tmp_path / "absent.pt", feature_size=8).network_record["feature_size"] == 8
    old = restoration_network("rat", feature_size=8).state_dict()
    plain = {k: v for k, v in old.items()}  # copied key by key: no metadata, no record
    torch.save(plain, tmp_path / "old.pt")
    assert read_network_record(tmp_path / "old.pt") is None
    assert network_from_checkpoint(tmp_path / "old.pt", feature_size=8, num_groups=2).network_record["network_kwargs"] == {"num_groups": 2}


def _load(path, net):
    return CheckedCheckpointLoader(str(path), {"model": net})(Engine(lambda e, b: None))


def test_loader_errors_name_the_file_and_what_to_pass(tmp_path):
    net8 = restoration_network("rat", feature_size=8)
    torch.save(net8.state_dict(), tmp_path / "model.pt")
    _load(tmp_path / "model.pt", restoration_network("rat", feature_size=8))  # fits
    with pytest.raises(FileNotFoundError, match=r"there is no checkpoint file .*absent\.pt.*--ckpt_path"):
        _load(tmp_path / "absent.pt", net8)
    (tmp_path / "cut.pt").write_bytes((tmp_path / "model.pt").read_bytes()[:3000])
    with pytest.raises(ValueError, match=r"cut\.pt' is not a complete PyTorch checkpoint") as e:
        _load(tmp_path / "cut.pt", net8)
    assert "\n" not in str(e.value)
    # the file records another network than the config builds: said before loading, with the record's settings
    with pytest.raises(CheckpointMismatchError, match=r"holds rat\(feature_size=8.*config builds, rat\(feature_size=16.*pass --feature_size 8"):
        _load(tmp_path / "model.pt", restoration_network("rat", feature_size=16))
    with pytest.raises(CheckpointMismatchError, match=r"pass --network_name 'rat'"):
        _load(tmp_path / "model.pt", restoration_network("redcnn", feature_size=8))
    # an old checkpoint without a record that does not fit: PyTorch's words and a width hint
    torch.save(dict(net8.state_dict()), tmp_path / "old.pt")
    with pytest.raises(ValueError, match=r"does not fit the network \(RAT\): size mismatch.*records no network.*--feature_size 8\?") as e:
        _load(tmp_path / "old.pt", restoration_network("rat"))
    assert "\n" not in str(e.value)


def test_a_terminated_engine_loads_nothing(tmp_path):
    """An inference that is already complete ends at STARTED: the loader then does not even look for the file."""
    engine = Engine(lambda e, b: None)
    engine.should_terminate = True
    CheckedCheckpointLoader(str(tmp_path / "absent.pt"), {"model": restoration_network("rat", feature_size=8)})(engine)


@pytest.mark.parametrize("value, expected", [(True, True), ("true", True), ("False", False), ("false", False), ("0", False),
                                             ("yes", True), (None, False), (1, True)])  # fmt: skip
def test_flags_read_true_and_false_as_the_command_line_gives_them(value, expected):
    assert as_flag(value) is expected


def test_bad_flag_is_named():
    with pytest.raises(ValueError, match="--amp must be true or false, got 'maybe'"):
        as_flag("maybe", "amp")
