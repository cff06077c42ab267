"""Networks: RAT and its blocks, the other seed systems, and the learned baselines of the quality benchmark."""

from monai_rat.networks.rat import RAT, convert_reference_state_dict, set_attention_impl

__all__ = ["RAT", "convert_reference_state_dict", "set_attention_impl"]

# the other seed systems: RDST (RDST-E: num_blocks=4) and SRDA
from monai_rat.networks.rdst import RDST
from monai_rat.networks.srda import SRDA, DiagnosisNet

__all__ += ["RDST", "SRDA", "DiagnosisNet"]

# learned baselines, and one factory that builds any restoration network by name (the bundles' --network_name)
from monai_rat.networks.edsr import EDSR
from monai_rat.networks.factory import RESTORATION_NETWORKS, restoration_network
from monai_rat.networks.nafnet import NAFNet
from monai_rat.networks.redcnn import REDCNN
from monai_rat.networks.record import (
    NETWORK_RECORD_KEY,
    CheckpointMismatchError,
    describe_record,
    network_from_checkpoint,
    read_network_record,
)
from monai_rat.networks.srcnn import SRCNN
from monai_rat.networks.wrappers import BareStateDictWrapper, ImageOnly

__all__ += [
    "EDSR",
    "NAFNet",
    "REDCNN",
    "PaddedRestormer",
    "SRCNN",
    "ImageOnly",
    "BareStateDictWrapper",
    "RESTORATION_NETWORKS",
    "restoration_network",
    "NETWORK_RECORD_KEY",
    "CheckpointMismatchError",
    "describe_record",
    "network_from_checkpoint",
    "read_network_record",
]


def __getattr__(name: str):
    """``PaddedRestormer`` on first use: it imports ``monai.networks.nets``, which takes seconds."""
    if name == "PaddedRestormer":
        from monai_rat.networks.restormer import PaddedRestormer

        return PaddedRestormer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
