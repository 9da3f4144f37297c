"""J&F metrics (DAVIS definitions) and the benchmarks' scoring protocols; independent of the model.

``JFMetric`` (torchmetrics, so torch) is imported on first use: the per-frame scoring modules import no torch,
so evaluation's writer process starts quickly.
"""
from mavos.metrics.region_boundary import boundary_measure, region_similarity

__all__ = ["JFMetric", "boundary_measure", "region_similarity"]


def __getattr__(name: str):
    if name == "JFMetric":
        from mavos.metrics.jf import JFMetric

        return JFMetric
    raise AttributeError(f"module 'mavos.metrics' has no attribute {name!r}")
