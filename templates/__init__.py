"""The built-in label templates (*.toml beside this file), installed as provision.templates_builtin.

pyproject.toml maps this folder into the package; provision.labels.templates reads it with
importlib.resources. No code lives here.
"""
