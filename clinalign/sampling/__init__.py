"""Drawing samples from a checkpoint: folders in the seed naming, and rejection sampling."""

from .sample import SampleConfig, SampleResult, sample_folder

__all__ = ["SampleConfig", "SampleResult", "sample_folder"]
