"""The `medloop` operator command: database, demo data, serving, workers, tokens and users."""

from __future__ import annotations

import os
import sys

import click
from flask.cli import FlaskGroup, with_appcontext


def _create_app():
    from app import create_app

    return create_app()


@click.group(cls=FlaskGroup, create_app=_create_app, add_default_commands=False, add_version_option=False)
def main() -> None:
    """MedLoop 运维命令。"""


@main.command("demo")
@with_appcontext
def demo_cmd() -> None:
    """写入演示数据：院区、科室、各角色用户、目录数据（可重复执行）。"""
    from app.db import db
    from app.demo import load_demo

    summary = load_demo()
    db.session.commit()
    for key, value in summary.items():
        click.echo(f"{key}: {value}")


@main.command("serve")
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--workers", default=2, show_default=True, type=int, help="gunicorn 进程数（生产模式）")
@click.option("--production/--embedded", default=None,
              help="默认：DATABASE_URL 指向 PostgreSQL 或设置了 REDIS_URL 时用 gunicorn，否则内嵌模式")
@click.option("--worker-class", type=click.Choice(["gthread", "gevent"]), default="gthread", show_default=True,
              help="gunicorn 工作方式：gthread（线程，默认）；gevent（协程，适合 HIS 权限校验等高频短请求的专用实例）")
@click.option("--threads", default=4, show_default=True, type=int, help="gthread 每进程线程数")
@click.option("--access-log/--no-access-log", default=True, show_default=True, help="gunicorn 访问日志（标准输出）")
def serve_cmd(port: int, host: str, workers: int, production: bool | None, worker_class: str, threads: int,
              access_log: bool) -> None:
    """启动 MedLoop（未配置时为内嵌模式：SQLite + 进程内后台任务）。"""
    if production is None:
        # SQLite means the embedded default whatever else is set: one process, in-process background work
        url = os.environ.get("DATABASE_URL", "")
        production = bool((url and not url.startswith("sqlite")) or os.environ.get("REDIS_URL"))
    if production:
        # keep-alive connections (hospital systems call the APIs over and over); sync workers would close each one
        args = [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"{host}:{port}",
                "--worker-class", worker_class, "--keep-alive", "30"]
        if worker_class == "gthread":
            args += ["--threads", str(threads)]
        else:
            args += ["--worker-connections", "1000"]
        if access_log:
            args += ["--access-logfile", "-"]
        args.append("wsgi:app")
        os.execv(sys.executable, args)
    from app import create_app
    from app.scheduler import start_in_process_scheduler

    app = create_app()
    with app.app_context():
        from app.db import db
        from app.deploy import deploy_shipped

        deploy_shipped()
        db.session.commit()
    start_in_process_scheduler(app)
    from app.loops.tasks import start_in_process_applier

    start_in_process_applier(app)
    click.echo(f"MedLoop 内嵌模式：http://{host}:{port}  数据库：{app.config['SQLALCHEMY_DATABASE_URI']}")
    from werkzeug.serving import run_simple

    # app.run() refuses to start under the flask CLI; the embedded default serves with werkzeug directly
    run_simple(host, port, app, threaded=True, use_reloader=False)


@main.command("worker", context_settings={"ignore_unknown_options": True})
@click.option("--nice", "niceness", default=5, show_default=True, type=click.IntRange(0, 19),
              help="降低后台任务的 CPU 优先级（与 Web 同机时，先保证对外接口的应答；0 表示不降低）")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker_cmd(niceness: int, celery_args: tuple[str, ...]) -> None:
    """启动 Celery 后台任务进程（需设置 REDIS_URL）。"""
    if not os.environ.get("REDIS_URL"):
        raise click.ClickException("未设置 REDIS_URL：内嵌模式下后台任务在 serve 进程内运行，无需 worker")
    if niceness:
        os.nice(niceness)  # kept across exec: the worker and its pool processes run below the web processes
    args = [sys.executable, "-m", "celery", "-A", "wsgi:celery", "worker", "-B", "--loglevel=INFO", *celery_args]
    os.execv(sys.executable, args)


@main.command("deploy")
@with_appcontext
def deploy_cmd() -> None:
    """部署随产品发布的表单与流程（仅部署有变化的文件）。"""
    from app.db import db
    from app.deploy import deploy_shipped

    result = deploy_shipped()
    db.session.commit()
    click.echo(f"新部署表单 {result['forms']} 个，流程 {result['processes']} 个")


@main.group("token")
def token_grp() -> None:
    """外部系统接口令牌。"""


@token_grp.command("create")
@click.option("--system", required=True, help="系统名称，如 HIS、LIS、PACS")
@with_appcontext
def token_create(system: str) -> None:
    """为一个医院系统签发接口令牌（只显示一次）。"""
    from app.audit import services as audit
    from app.auth.services import create_api_token
    from app.db import db

    token = create_api_token(system=system)
    audit.record("medloop-cli", "token.created", None, entity_type="api_tokens", extra={"system": system})
    db.session.commit()
    click.echo(token)


@main.group("user")
def user_grp() -> None:
    """用户管理。"""


@user_grp.command("create")
@click.option("--username", required=True)
@click.option("--name", required=True, help="姓名")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.option("--role", "roles", multiple=True, help="角色编码，可多次指定：admin/mao/committee/dept_group/physician…")
@click.option("--dept", "dept_code", default=None, help="科室编码")
@click.option("--staff-no", default=None)
@click.option("--title", default=None, help="职称")
@with_appcontext
def user_create(username: str, name: str, password: str, roles: tuple[str, ...], dept_code: str | None,
                staff_no: str | None, title: str | None) -> None:
    """创建本地用户。"""
    from sqlalchemy import select

    from app.audit import services as audit
    from app.auth.models import Department
    from app.auth.services import create_user
    from app.db import db
    from app.errors import ValidationFailed

    dept = None
    if dept_code:
        dept = db.session.scalar(select(Department).where(Department.code == dept_code))
        if dept is None:
            raise click.ClickException(f"科室编码不存在：{dept_code}")
    try:
        user = create_user(username=username, name=name, password=password, dept=dept, roles=list(roles),
                           staff_no=staff_no, title=title)
    except ValidationFailed as exc:
        raise click.ClickException("；".join(f"{e['path']}：{e['message']}" for e in exc.errors)) from exc
    audit.record("medloop-cli", "user.created", user, after={"username": username, "roles": list(roles)})
    db.session.commit()
    click.echo(f"已创建用户 {username}（id={user.id}）")


def _register_db(group: click.Group) -> None:
    from flask_migrate.cli import db as db_group

    group.add_command(db_group, "db")


_register_db(main)
