"""clinalign: align synthetic medical images with clinical knowledge using expert feedback."""

__version__ = "0.1.0"
