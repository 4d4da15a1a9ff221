"""Applying stored loop events in the background: Celery in production, a thread in the embedded default.

The stored events are the queue; a wake-up only shortens the wait, so a lost one delays, never drops."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import click
from flask import current_app
from flask.cli import AppGroup

from app.celery_app import celery

log = logging.getLogger(__name__)
_event = threading.Event()
_thread: list[threading.Thread] = []


def drain(max_rounds: int = 1000, batch: int = 100) -> int:
    """Apply pending orders batch by batch, committing each batch, until a round claims no order (or after
    max_rounds), as `medloop loops work` does. A batch that applies nothing does not stop the drain: its orders
    wait for missing nodes and are not claimed again before their grace period ends, so the next round reaches
    the other due orders. Returns events applied."""
    from app.db import db
    from app.loops import services

    total = 0
    for _ in range(max_rounds):
        try:
            stats = services.apply_pending(limit=batch)
            db.session.commit()
        except Exception:
            db.session.rollback()
            raise
        total += stats.applied
        if stats.orders == 0:  # nothing claimable (orders locked by another worker are skipped)
            break
    return total


@celery.task(name="medloop.loops_apply", bind=True, max_retries=None)
def apply_task(self) -> int:
    from app.db import db

    try:
        return drain()
    finally:
        db.session.remove()


WAKE_GAP = 0.05  # seconds: at most one wake-up message per process in this time
_wake_lock = threading.Lock()
_last_wake = [0.0]
_trailing = [False]


def _send_wake() -> None:
    try:
        apply_task.delay()
    except Exception:  # noqa: BLE001 - the periodic sweep applies the events anyway
        log.warning("could not enqueue loops_apply; the sweep will pick the events up")


def _trailing_wake() -> None:
    with _wake_lock:
        _trailing[0] = False
        _last_wake[0] = time.monotonic()
    _send_wake()


def wake() -> None:
    """Tell a worker there is work (after the intake transaction committed).

    Under load intake commits many times a second and one task drains everything pending, so a process sends at
    most one wake-up per WAKE_GAP: the first at once, later ones folded into one sent when the gap ends (so the
    last commit is always followed by a wake-up within WAKE_GAP)."""
    if current_app.config.get("CELERY_ALWAYS_EAGER", True):
        _event.set()
        return
    now = time.monotonic()
    with _wake_lock:
        since = now - _last_wake[0]
        if since >= WAKE_GAP:
            _last_wake[0] = now
            send = True
        else:
            send = False
            if not _trailing[0]:
                _trailing[0] = True
                timer = threading.Timer(WAKE_GAP - since, _trailing_wake)
                timer.daemon = True
                timer.start()
    if send:
        _send_wake()


def start_in_process_applier(app, interval: float = 2.0) -> None:
    """Embedded default: one background thread applies events soon after they are accepted."""
    if _thread:
        return

    def loop() -> None:
        from app.db import db

        while True:
            _event.wait(interval)
            _event.clear()
            with app.app_context():
                try:
                    drain()
                except Exception:  # noqa: BLE001 - keep the applier alive; events stay stored
                    log.exception("applying loop events failed")
                finally:
                    db.session.remove()

    t = threading.Thread(target=loop, name="medloop-loops", daemon=True)
    t.start()
    _thread.append(t)


def sweep() -> int:
    """Periodic job: re-flag orders whose grace period ended and apply whatever is pending."""
    from app.db import db
    from app.loops import services

    services.run_grace_sweep()
    db.session.commit()
    return drain()


# ---------------------------------------------------------------- CLI: medloop loops work

cli = AppGroup("loops", help="医疗流程闭环：事件应用、演示数据、日汇总。")


@cli.command("work")
@click.option("--batch", default=100, show_default=True, type=click.IntRange(1, 1000),
              help="每批认领的医嘱数（每批一个事务）")
@click.option("--forever", is_flag=True, help="处理完后继续等待新事件（默认：没有可应用的事件即退出）")
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="空闲时的轮询间隔（秒，仅 --forever）")
@click.option("--die-after", type=click.IntRange(1), default=None, hidden=True,
              help="仅供测试：累计应用满 N 个事件后，在该批事务提交前以 SIGKILL 结束本进程")
def work_cmd(batch: int, forever: bool, interval: float, die_after: int | None) -> None:
    """应用已接收的闭环事件：逐批认领待应用的医嘱（每个医嘱一把事务级咨询锁，被占用的跳过，可多进程并行），每批一个事务提交。"""
    from app.db import db
    from app.loops import services

    total = 0
    try:
        while True:
            try:
                services.run_grace_sweep()
                db.session.commit()
                while True:
                    stats = services.apply_pending(limit=batch)  # flushed, not committed
                    if die_after is not None and total + stats.applied >= die_after:
                        # crash test: the batch's writes are in the database, its transaction still open
                        os.kill(os.getpid(), signal.SIGKILL)
                    db.session.commit()
                    total += stats.applied
                    if stats.orders == 0:  # nothing claimable (orders locked by another worker are skipped)
                        break
            except Exception:
                db.session.rollback()
                if not forever:
                    raise
                log.exception("applying loop events failed; retrying in %.1f s", interval)
            finally:
                db.session.remove()
            if not forever:
                break
            time.sleep(interval)
    except KeyboardInterrupt:  # Ctrl+C: the open batch was not committed and is applied again later
        pass
    click.echo(f"已应用 {total} 个事件")


def register_cli(app) -> None:
    """Add `medloop loops work`, sharing the `loops` group with other loop features' commands."""
    group = app.cli.commands.get("loops")
    if isinstance(group, click.Group) and group is not cli:
        for name, command in cli.commands.items():
            group.add_command(command, name)
    else:
        app.cli.add_command(cli)
