"""m2mgw: an M2M service platform gateway for GB/Z 41383-2022 (WMMP) on Twisted."""
