"""JSON Schema forms: server-side rendering in Chinese, validation with per-field errors, versioned templates."""


def register(app):
    # shipped forms/ files are stored by services.sync_files(), called at deploy time, not per request
    from app.forms import start, views
    from app.web import add_nav

    app.register_blueprint(views.bp)
    # a row's extra start-form fields, read-only, on detail pages and task contexts
    app.add_template_global(start.stored_html, "start_form_extras")
    add_nav("forms.index", "表单模板", "forms.admin", order=80)
