"""The platform side of the terminal protocol, by phase (see :mod:`.dispatch`)."""
