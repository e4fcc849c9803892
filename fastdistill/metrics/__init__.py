"""Sample-quality metrics."""
from fastdistill.metrics.distances import median_bandwidth, mmd_rbf, sliced_wasserstein

__all__ = ["sliced_wasserstein", "mmd_rbf", "median_bandwidth"]
from fastdistill.metrics.digits_classifier import DigitsClassifier, load_digits_classifier
from fastdistill.metrics.fidelity import (
    ImageTensorDataset,
    InceptionWeightsNotFoundError,
    compute_metrics,
    extract_features,
    register_digits_extractor,
)
__all__ += ["DigitsClassifier", "load_digits_classifier", "ImageTensorDataset", "InceptionWeightsNotFoundError",
            "compute_metrics", "extract_features", "register_digits_extractor"]
