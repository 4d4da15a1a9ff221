"""Physician archives (医师技术档案): profiles, career records with review and history, certificates, HR import,
departure and reinstatement."""


def register(app):
    from celery.schedules import crontab

    from app.archives import api, flow, tasks, views
    from app.archives.seed import seed_archives
    from app.archives.services import AUDIT_LABELS
    from app.audit.services import ACTION_LABELS
    from app.demo import EXTRA_LOADERS
    from app.web import add_nav

    app.register_blueprint(views.bp)
    app.register_blueprint(api.bp)
    EXTRA_LOADERS["医师档案"] = seed_archives
    ACTION_LABELS.update(AUDIT_LABELS)
    add_nav("archives.mine", "我的档案", None, order=20)
    add_nav("archives.index", "医师档案", "archives.view", order=21)
    app.extensions["archives_flow_hooks"] = flow.install()
    celery = app.extensions.get("celery")
    if celery is not None:
        # daily at 07:00 Beijing time (the Celery timezone): reminders before the working day starts
        celery.conf.beat_schedule["archives-daily-reminders"] = {"task": tasks.DAILY_TASK,
                                                                  "schedule": crontab(hour=7, minute=0)}
    import click

    @app.cli.command("archives-reminders")
    def archives_reminders() -> None:
        """Send today's certificate reminders (idempotent) and refresh archive completeness."""
        counts = tasks.run_daily(force=True)
        click.echo(f"证件提醒：{counts}")
