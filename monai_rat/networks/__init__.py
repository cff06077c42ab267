"""Networks: RAT and its blocks."""

from monai_rat.networks.rat import RAT, convert_reference_state_dict

__all__ = ["RAT", "convert_reference_state_dict"]

# the other seed systems: RDST (RDST-E: num_blocks=4) and SRDA
from monai_rat.networks.rdst import RDST
from monai_rat.networks.srda import SRDA, DiagnosisNet

__all__ += ["RDST", "SRDA", "DiagnosisNet"]
