"""Lightning callbacks of infra-pl, importable as ``infra_pl.callbacks``."""
