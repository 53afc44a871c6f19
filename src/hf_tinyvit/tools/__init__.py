"""What a stored teacher makes possible beyond training a student: a search for students under a
parameter budget and a throughput floor, scored from the store (`search`); an audit of the labels the
teacher keeps disagreeing with (`audit`); the classes the teacher takes for one another (`similarity`);
and their pictures (`plots`, matplotlib imported on first use)."""

from .audit import DEFAULT_AUDIT_THRESHOLD, LabelAudit, audit_distributions, audit_labels, precision_recall_curve
from .plots import plot_class_similarity, plot_precision_recall, plot_search, plot_suspects
from .records import SampleDistributions, accumulate_distributions, iter_sample_distributions
from .search import (
    ProxySettings,
    SearchCandidate,
    SearchSpace,
    StudentArchitecture,
    StudentCost,
    StudentSearch,
    measure_student,
    pareto_front,
    search_students,
)
from .similarity import ClassSimilarity, class_similarity, class_similarity_matrix

__all__ = [
    "DEFAULT_AUDIT_THRESHOLD",
    "ClassSimilarity",
    "LabelAudit",
    "ProxySettings",
    "SampleDistributions",
    "SearchCandidate",
    "SearchSpace",
    "StudentArchitecture",
    "StudentCost",
    "StudentSearch",
    "accumulate_distributions",
    "audit_distributions",
    "audit_labels",
    "class_similarity",
    "class_similarity_matrix",
    "iter_sample_distributions",
    "measure_student",
    "pareto_front",
    "plot_class_similarity",
    "plot_precision_recall",
    "plot_search",
    "plot_suspects",
    "precision_recall_curve",
    "search_students",
]
