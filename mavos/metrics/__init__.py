"""J&F metrics (DAVIS definitions) and the benchmarks' scoring protocols; independent of the model."""
from mavos.metrics.jf import JFMetric
from mavos.metrics.region_boundary import boundary_measure, region_similarity

__all__ = ["JFMetric", "boundary_measure", "region_similarity"]
