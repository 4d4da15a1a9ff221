"""JSON Schema forms: server-side rendering in Chinese, validation with per-field errors, versioned templates."""


def register(app):
    pass
