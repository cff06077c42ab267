"""Loss functions: the focal region loss (RAT, Eq. 5)."""
