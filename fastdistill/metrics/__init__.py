"""Sample-quality metrics: distances in data space, FID and friends in the digits classifier's
features, and the reference-set protocol every evaluation uses (:mod:`.quality`)."""
from fastdistill.metrics.digits_classifier import DigitsClassifier, load_digits_classifier
from fastdistill.metrics.distances import median_bandwidth, mmd_rbf, sliced_wasserstein
from fastdistill.metrics.fidelity import (
    ImageTensorDataset,
    InceptionWeightsNotFoundError,
    compute_metrics,
    extract_features,
    register_digits_extractor,
)
from fastdistill.metrics.quality import DIGITS_N, EvalError, ReferenceData, quality, reference_data

__all__ = ["sliced_wasserstein", "mmd_rbf", "median_bandwidth", "DigitsClassifier", "load_digits_classifier",
           "ImageTensorDataset", "InceptionWeightsNotFoundError", "compute_metrics", "extract_features",
           "register_digits_extractor", "DIGITS_N", "EvalError", "ReferenceData", "quality", "reference_data"]
