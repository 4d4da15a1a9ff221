"""Clinical privileges (医疗权限): catalogue, applications through the grant flow, grants."""


def register(app):
    pass
