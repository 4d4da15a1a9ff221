"""伦理审查 standalone: application → office picks mode/members/items → each member's opinion → summary
(counts, majority) → decision → Word letter; resubmission; validation of the setup."""

from __future__ import annotations

from io import BytesIO

import pytest
from docx import Document

from app.errors import InvalidTransition, ValidationFailed
from app.technology.services import ethics
from app.technology.services.common import designated_user_id
from app.workflow import services as wf


def _apply(user):
    return ethics.apply(applicant=user("card_doc"), data={"title": "冠脉内超声指导下支架植入的临床研究",
                                                         "description": "前瞻性队列研究，入组 120 例"})


def _vote(review, ready, user, votes: dict[str, tuple[str, str | None]]):
    for t in ready(review.instance_id, "member_opinion [child]"):
        # the member a task is for (assigned, or named in its task data until the engine assigns by assignee_var)
        member_id = t.assignee_id or designated_user_id(t)
        name = next(n for n in votes if user(n).id == member_id)
        opinion, comment = votes[name]
        wf.complete(task_id=t.id, actor=user(name),
                    data={"opinion": opinion, **({"comment": comment} if comment else {})})


def _letter_text(data: bytes) -> str:
    doc = Document(BytesIO(data))
    parts = [p.text for p in doc.paragraphs]
    for table in doc.tables:
        for row in table.rows:
            parts.extend(c.text for c in row.cells)
    return "\n".join(parts)


def test_meeting_review_summary_decision_and_word_letter(user, ready, do):
    review = _apply(user)
    assert review.status == "pending_setup" and [t.spec_name for t in ready(review.instance_id)] == ["ethics_setup"]
    members = [user("ethics1"), user("ethics2"), user("ethics3")]
    ethics.setup_review(review=review, actor=user("mao"),
                        data={"mode": "meeting", "member_ids": [str(m.id) for m in members],
                              "review_items": ["science", "risk_benefit", "consent"], "meeting_date": "2026-12-05"})
    assert review.status == "in_review" and review.mode == "meeting"
    tasks = ready(review.instance_id, "member_opinion [child]")
    assert sorted(t.assignee_id for t in tasks) == sorted(m.id for m in members)
    _vote(review, ready, user, {"ethics1": ("agree", None), "ethics2": ("modify", "知情同意书补充风险说明"),
                                "ethics3": ("modify", "明确退出标准")})
    summary = ethics.summary(review)
    assert summary["counts"] == {"agree": 1, "modify": 2, "disagree": 0} and summary["submitted"] == 3
    [decision] = ready(review.instance_id, "ethics_decision")
    assert wf.task_data(decision)["majority"] == "modify"
    assert wf.task_data(decision)["suggested_decision"] == "approve_modified"
    with pytest.raises(ValidationFailed):  # 修改后同意 needs the conditions
        wf.complete(task_id=decision.id, actor=user("mao"), data={"decision": "approve_modified"})
    wf.complete(task_id=decision.id, actor=user("mao"),
                data={"decision": "approve_modified", "conditions": "按委员意见修改知情同意书后实施"})
    assert review.status == "decided" and review.decision == "approve_modified"
    assert (review.agree_count, review.modify_count, review.disagree_count, review.majority) == (1, 2, 0, "modify")
    text = _letter_text(ethics.letter_docx(review=review))
    for expected in ("伦理审查决定书", review.number, "冠脉内超声指导下支架植入的临床研究", "会议审查", "蒋委员", "沈委员",
                     "杨委员", "修改后同意", "按委员意见修改知情同意书后实施", "同意 1 票", "盖章"):
        assert expected in text, expected


def test_resubmission_goes_back_to_the_same_members(user, ready, do):
    review = _apply(user)
    ethics.setup_review(review=review, actor=user("mao"),
                        data={"mode": "expedited", "member_ids": [user("ethics1").id, user("ethics2").id],
                              "review_items": ["consent"]})
    _vote(review, ready, user, {"ethics1": ("disagree", "方案不清"), "ethics2": ("modify", "补充")})
    [decision] = ready(review.instance_id, "ethics_decision")
    assert wf.task_data(decision)["majority"] == "none"
    wf.complete(task_id=decision.id, actor=user("mao"),
                data={"decision": "resubmit", "conditions": "完善研究方案", "comment": "修改后重审"})
    assert review.status == "resubmit"
    [revise] = ready(review.instance_id, "resubmit")
    assert revise.assignee_id == user("card_doc").id
    do(review.instance_id, "resubmit", "card_doc", revised_text="修订后的方案", revision_note="已完善")
    assert review.round == 2 and review.description == "修订后的方案"
    _vote(review, ready, user, {"ethics1": ("agree", None), "ethics2": ("agree", None)})
    assert ethics.summary(review)["counts"]["agree"] == 2
    do(review.instance_id, "ethics_decision", "mao", decision="approve")
    assert review.status == "decided" and review.decision == "approve"
    assert len(review.opinions) == 4 and {o.round for o in review.opinions} == {1, 2}


def test_setup_is_validated_with_field_paths(user):
    review = _apply(user)
    cases = [
        ({"mode": "meeting", "member_ids": [user("ethics1").id], "review_items": ["science"],
          "meeting_date": "2026-12-01"}, {"member_ids"}),
        ({"mode": "expedited", "member_ids": [user("gs_doc").id, 999999], "review_items": ["bogus"]},
         {"member_ids/0", "member_ids/1", "review_items/0"}),
        ({"mode": "meeting", "member_ids": [user("ethics1").id, user("ethics2").id, user("ethics3").id],
          "review_items": []}, {"review_items", "meeting_date"}),
        ({"mode": "x", "member_ids": [user("card_doc").id], "review_items": ["science"]}, {"mode", "member_ids/0"}),
    ]
    for data, paths in cases:
        with pytest.raises(ValidationFailed) as err:
            ethics.setup_review(review=review, actor=user("mao"), data=data)
        assert {e["path"] for e in err.value.errors} == paths, data


def test_no_letter_before_a_decision(user):
    review = _apply(user)
    with pytest.raises(InvalidTransition):
        ethics.letter_docx(review=review)


def test_letter_download_page(user, ready, do, client, login):
    review = _apply(user)
    ethics.setup_review(review=review, actor=user("mao"),
                        data={"mode": "expedited", "member_ids": [user("ethics2").id], "review_items": ["privacy"]})
    _vote(review, ready, user, {"ethics2": ("agree", None)})
    do(review.instance_id, "ethics_decision", "mao", decision="approve", comment="同意")
    login("card_doc")
    page = client.get(f"/technology/ethics/{review.id}").get_data(as_text=True)
    assert "下载审查决定书" in page and "同意 1" in page
    resp = client.get(f"/technology/ethics/{review.id}/letter.docx")
    assert resp.status_code == 200 and resp.mimetype.endswith("wordprocessingml.document")
    assert "快速审查" in _letter_text(resp.data)
    login("orth_doc")
    assert client.get(f"/technology/ethics/{review.id}/letter.docx").status_code == 403
