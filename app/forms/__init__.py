"""JSON Schema forms: server-side rendering in Chinese, validation with per-field errors, versioned templates."""


def register(app):
    # shipped forms/ files are stored by services.sync_files(), called at deploy time, not per request
    from app.forms import views
    from app.web import add_nav

    app.register_blueprint(views.bp)
    add_nav("forms.index", "表单模板", "forms.admin", order=80)
