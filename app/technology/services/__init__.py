"""Medical-technology services (seed 000 §二), one module per area.

Invariants:
- every approval or follow-up runs through a BPMN flow (tech_new_project, tech_ethics_review, tech_restricted,
  tech_high_risk_eval, tech_day_surgery_qualification); the business rows here only mirror its outcome through
  the engine's hooks (app.technology.flow), in the same transaction as the step that caused it;
- a multi-instance review step (experts, ethics members) gives each named reviewer an own task, and only that
  reviewer may complete it; one opinion per reviewer and round is recorded;
- an ethics review asked for by a technology flow hands its decision back by the message `tech_ethics_done`
  correlated on the asking application's number;
- nothing regulators may ask about is deleted: cases are voided, catalogue items retired, authorisations revoked,
  applications closed with who/when/why; every change is audited; services flush and never commit.
"""
