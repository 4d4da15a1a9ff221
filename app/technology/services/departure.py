"""A departure ends every technology authorisation (seed 000 §一.3: 离职后自动切断操作权限).

Invariants:
- called by app.archives.departure.register_departure in the same transaction that disables the account and
  revokes the clinical-privilege grants, so nothing stays in force for a departed person;
- day-surgery qualifications and high-risk authorisations (active or suspended) are revoked, never deleted, each
  with who/when/why and an audit row carrying the departure reason; reinstatement does not restore them.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from app.audit import services as audit
from app.auth.models import User
from app.db import db, utcnow
from app.technology.models.day_surgery import DaySurgeryQualification
from app.technology.models.high_risk import HighRiskAuthorization
from app.technology.services import day_surgery


@dataclass(frozen=True)
class Ended:
    """What a departure ended: the ids of the revoked rows."""

    day_surgery_qualifications: tuple[int, ...]
    high_risk_authorizations: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.day_surgery_qualifications) + len(self.high_risk_authorizations)


def end_for_departure(*, user: User, reason: str, actor: User | str | None) -> Ended:
    """Revoke the person's day-surgery qualifications and high-risk authorisations at once, audited with the reason
    (the holder is not notified: the account is already closed). Returns what was ended."""
    reason = ((reason or "").strip() or "人员离职")[:500]
    qualifications = list(db.session.scalars(select(DaySurgeryQualification).where(
        DaySurgeryQualification.user_id == user.id, DaySurgeryQualification.status.in_(("active", "suspended")))
        .order_by(DaySurgeryQualification.id)))
    for q in qualifications:
        day_surgery.revoke_qualification(qualification=q, reason=reason, actor=actor, notify_holder=False)
    # updated through the model here (high_risk.revoke_authorization takes one row and a User actor); the audit
    # action is the one that service writes, marked with the departure as its cause
    authorizations = list(db.session.scalars(select(HighRiskAuthorization).where(
        HighRiskAuthorization.user_id == user.id, HighRiskAuthorization.status != "revoked")
        .order_by(HighRiskAuthorization.id)))
    now = utcnow()
    for auth in authorizations:
        before = {"status": auth.status}
        auth.status = "revoked"
        auth.revoked_at = now
        auth.revoked_by_id = getattr(actor, "id", None)
        auth.revoke_reason = reason
        audit.record(actor, "technology.high_risk_revoked", auth, before=before,
                     after={"status": "revoked", "reason": reason, "cause": "departure"})
    db.session.flush()
    return Ended(tuple(q.id for q in qualifications), tuple(a.id for a in authorizations))
