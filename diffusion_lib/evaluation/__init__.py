"""Evaluation: sample-quality metrics, the feature classifier, checkpoint scoring.

Metrics never need a download: image features come from a classifier trained on the dataset
itself (`classifier`), and every score is reported beside its real-versus-real floor.
"""

from diffusion_lib.evaluation.checkpoints import (
    EvalPlan,
    EvalReport,
    EvalSpec,
    best_previous_checkpoint,
    evaluate_checkpoints,
    plan_evaluation,
    prepare_references,
    score_checkpoint,
    write_report,
)
from diffusion_lib.evaluation.classifier import (
    ClassifierSpec,
    FeatureExtractor,
    load_or_train_classifier,
)
from diffusion_lib.evaluation.metrics import (
    MetricInputError,
    class_histogram,
    classifier_score,
    fid,
    frechet_distance,
    kde_bandwidth,
    kde_log_likelihood,
    kid,
    mmd_rbf,
    precision_recall,
    sliced_wasserstein,
)

__all__ = [
    "best_previous_checkpoint",
    "ClassifierSpec",
    "EvalPlan",
    "EvalReport",
    "EvalSpec",
    "FeatureExtractor",
    "MetricInputError",
    "class_histogram",
    "classifier_score",
    "evaluate_checkpoints",
    "fid",
    "frechet_distance",
    "kde_bandwidth",
    "kde_log_likelihood",
    "kid",
    "load_or_train_classifier",
    "mmd_rbf",
    "plan_evaluation",
    "precision_recall",
    "prepare_references",
    "score_checkpoint",
    "sliced_wasserstein",
    "write_report",
]
