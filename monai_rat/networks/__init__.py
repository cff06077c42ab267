"""Networks: RAT and its blocks."""

from monai_rat.networks.rat import RAT, convert_reference_state_dict

__all__ = ["RAT", "convert_reference_state_dict"]
