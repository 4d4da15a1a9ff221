"""Medical-technology models (seed 000 §二), one module per area; imported together so the metadata is complete."""

from app.technology.models.day_surgery import (
    DaySurgeryApplication,
    DaySurgeryCase,
    DaySurgeryProcedure,
    DaySurgeryQualification,
)
from app.technology.models.ethics import EthicsOpinion, EthicsReview, EthicsStatus
from app.technology.models.high_risk import HighRiskAuthorization, HighRiskEvaluation, HighRiskItem
from app.technology.models.new_tech import ExpertReview, NewTechProject, ProgressReport, ProjectStatus
from app.technology.models.restricted import (
    RestrictedAnnualSummary,
    RestrictedApplication,
    RestrictedCaseReport,
    RestrictedStatus,
    RestrictedTechnology,
)

__all__ = [
    "DaySurgeryApplication", "DaySurgeryCase", "DaySurgeryProcedure", "DaySurgeryQualification",
    "EthicsOpinion", "EthicsReview", "EthicsStatus", "ExpertReview", "HighRiskAuthorization",
    "HighRiskEvaluation", "HighRiskItem", "NewTechProject", "ProgressReport", "ProjectStatus",
    "RestrictedAnnualSummary", "RestrictedApplication", "RestrictedCaseReport", "RestrictedStatus",
    "RestrictedTechnology",
]
