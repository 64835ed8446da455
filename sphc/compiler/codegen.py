"""Stage 5, ModulePlan → Python source, through the jinja2 templates in ``templates/``.

``make_env`` is the only place jinja2 is configured: StrictUndefined so a typo in a template
fails loudly, trimmed blocks so control lines vanish. The rendered text is compiled once before
it is returned, so a template bug surfaces here as an ``SphcInternalError``, not at import.
"""

from __future__ import annotations

from functools import cache

import jinja2

from sphc.compiler.plan import ModulePlan
from sphc.compiler.resources import data_dir
from sphc.errors import SphcInternalError


@cache
def make_env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(data_dir("templates"))),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render_template(name: str, **context: object) -> str:
    """Render one template (the module, or a kernel template included by it; tests render kernels alone)."""
    return make_env().get_template(name).render(**context)


def render(plan: ModulePlan) -> str:
    """The generated module's source text (deterministic: same plan, same bytes)."""
    text = render_template("module.py.j2", plan=plan)
    try:
        compile(text, "<sphc generated module>", "exec")
    except SyntaxError as e:
        raise SphcInternalError(f"templates/module.py.j2 rendered invalid Python: {e}") from e
    return text
