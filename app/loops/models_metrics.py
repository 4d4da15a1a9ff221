"""Day-level rollups behind the closed-loop dashboards (seed 003 §二.2).

One row per (order start day in Asia/Shanghai, campus, department, loop type) — and per node, and per
turnaround bucket — holding additive counts and sums, so any range of days sums to the same figures the raw
tables give. Rebuilt per day by app.loops.metrics.refresh_rollups (delete + INSERT … SELECT), never edited.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Float, Index, Integer, SmallInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Model, utcnow
from app.loops.models import BigId


class LoopDailyStat(Model):
    __tablename__ = "loop_daily_stats"
    __table_args__ = (Index("ix_loop_daily_stats_day_type", "day", "loop_type_key"),
                      {"comment": "闭环日汇总（按医嘱开始日、院区、科室、闭环类型）"})
    id: Mapped[int] = mapped_column(BigId, primary_key=True, comment="主键")
    day: Mapped[date] = mapped_column(comment="医嘱开始日（北京时间）")
    campus_id: Mapped[int | None] = mapped_column(comment="院区")
    dept_id: Mapped[int | None] = mapped_column(comment="科室")
    loop_type_key: Mapped[str] = mapped_column(String(64), comment="闭环类型")
    started: Mapped[int] = mapped_column(Integer, default=0, comment="开始的医嘱数")
    due: Mapped[int] = mapped_column(Integer, default=0, comment="应完成数（已结束或超过标准总时长）")
    closed: Mapped[int] = mapped_column(Integer, default=0, comment="已闭环数")
    closed_clean: Mapped[int] = mapped_column(Integer, default=0, comment="完整闭环数（已闭环且无缺环）")
    interrupted: Mapped[int] = mapped_column(Integer, default=0, comment="中断数")
    in_progress: Mapped[int] = mapped_column(Integer, default=0, comment="进行中数")
    overdue: Mapped[int] = mapped_column(Integer, default=0, comment="超时未闭环数（进行中且超过标准总时长）")
    skipped_orders: Mapped[int] = mapped_column(Integer, default=0, comment="有缺环的医嘱数")
    abnormal_orders: Mapped[int] = mapped_column(Integer, default=0, comment="有异常环节的医嘱数")
    interrupted_minutes: Mapped[float] = mapped_column(Float, default=0, comment="中断前用时合计（分钟）")
    cycle_count: Mapped[int] = mapped_column(Integer, default=0, comment="首末节点用时样本数（已闭环）")
    cycle_minutes: Mapped[float] = mapped_column(Float, default=0, comment="首末节点用时合计（分钟）")
    exec_count: Mapped[int] = mapped_column(Integer, default=0, comment="医嘱执行周转样本数")
    exec_minutes: Mapped[float] = mapped_column(Float, default=0, comment="医嘱执行周转合计（开立→执行，分钟）")
    booking_count: Mapped[int] = mapped_column(Integer, default=0, comment="检查预约周转样本数")
    booking_minutes: Mapped[float] = mapped_column(Float, default=0, comment="检查预约周转合计（申请→预约，分钟）")
    report_count: Mapped[int] = mapped_column(Integer, default=0, comment="检查报告周转样本数")
    report_minutes: Mapped[float] = mapped_column(Float, default=0, comment="检查报告周转合计（申请→报告，分钟）")


class LoopDailyNodeStat(Model):
    __tablename__ = "loop_daily_node_stats"
    __table_args__ = (Index("ix_loop_daily_node_stats_day_type", "day", "loop_type_key"),
                      {"comment": "闭环节点日汇总（及时率、节点耗时、缺环、异常、中断位置）"})
    id: Mapped[int] = mapped_column(BigId, primary_key=True, comment="主键")
    day: Mapped[date] = mapped_column(comment="医嘱开始日（北京时间）")
    campus_id: Mapped[int | None] = mapped_column(comment="院区")
    dept_id: Mapped[int | None] = mapped_column(comment="科室")
    loop_type_key: Mapped[str] = mapped_column(String(64), comment="闭环类型")
    node_key: Mapped[str] = mapped_column(String(64), comment="节点")
    seq: Mapped[int] = mapped_column(Integer, default=0, comment="节点顺序")
    timed: Mapped[int] = mapped_column(Integer, default=0, comment="有用时的节点数（已完成/补录且有标准用时）")
    early: Mapped[int] = mapped_column(Integer, default=0, comment="提前数（用时不足标准一半）")
    on_time: Mapped[int] = mapped_column(Integer, default=0, comment="按时数（标准一半至标准之间）")
    late: Mapped[int] = mapped_column(Integer, default=0, comment="延迟数（超过标准用时）")
    late_minutes: Mapped[float] = mapped_column(Float, default=0, comment="延迟时长合计（超出标准的分钟）")
    actual_minutes: Mapped[float] = mapped_column(Float, default=0, comment="实际用时合计（分钟）")
    standard_minutes: Mapped[float] = mapped_column(Float, default=0, comment="标准用时合计（分钟）")
    skipped: Mapped[int] = mapped_column(Integer, default=0, comment="缺环次数（含后来补录）")
    abnormal: Mapped[int] = mapped_column(Integer, default=0, comment="异常次数")
    interrupted: Mapped[int] = mapped_column(Integer, default=0, comment="在此节点中断的医嘱数")
    interrupted_minutes: Mapped[float] = mapped_column(Float, default=0, comment="在此节点中断前用时合计（分钟）")


class LoopDailyHistogram(Model):
    __tablename__ = "loop_daily_histograms"
    __table_args__ = (Index("ix_loop_daily_histograms_day_measure", "day", "measure"),
                      {"comment": "闭环周转时长日分布（分桶计数，用于中位数、P90）"})
    id: Mapped[int] = mapped_column(BigId, primary_key=True, comment="主键")
    day: Mapped[date] = mapped_column(comment="医嘱开始日（北京时间）")
    campus_id: Mapped[int | None] = mapped_column(comment="院区")
    dept_id: Mapped[int | None] = mapped_column(comment="科室")
    loop_type_key: Mapped[str] = mapped_column(String(64), comment="闭环类型")
    measure: Mapped[str] = mapped_column(String(16), comment="指标：cycle 首末/exec 执行/booking 预约/report 报告")
    bucket: Mapped[int] = mapped_column(SmallInteger, comment="分桶序号（见 metrics.BUCKETS）")
    n: Mapped[int] = mapped_column(Integer, default=0, comment="医嘱数")


class LoopRollupDay(Model):
    __tablename__ = "loop_rollup_days"
    __table_args__ = {"comment": "已汇总的日期（看板据此决定读汇总还是读明细）"}
    day: Mapped[date] = mapped_column(primary_key=True, comment="医嘱开始日（北京时间）")
    orders: Mapped[int] = mapped_column(Integer, default=0, comment="当日开始的医嘱数")
    refreshed_at: Mapped[datetime] = mapped_column(default=utcnow, comment="汇总时间")
    seconds: Mapped[float] = mapped_column(Float, default=0, comment="汇总耗时（秒）")
