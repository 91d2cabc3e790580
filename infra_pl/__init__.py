"""infra-pl: SFT on math/code reasoning data and EK-FAC influence attribution, on Lightning."""

__version__ = "0.1.0"
