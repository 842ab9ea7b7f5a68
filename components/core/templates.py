"""Jinja2 templates of reports and cards (the `templates/` folder beside the module that renders them)."""
from __future__ import annotations

import functools


@functools.cache
def environment(package: str):
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader(package, "templates"), autoescape=False,
                              trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                              undefined=jinja2.StrictUndefined)


def render(package: str, name: str, context: dict, filters: dict | None = None) -> str:
    env = environment(package)
    env.filters.update(filters or {})
    return env.get_template(name).render(context).rstrip() + "\n"
