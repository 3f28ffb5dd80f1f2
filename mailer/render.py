"""Templates to personalized subject, HTML and text: CSS inlined once per template version.

Marketers write HTML templates with a `<style>` block and `{% extends %}` layouts. Mail
clients ignore `<style>`, so CSS must be inlined, and premailer costs milliseconds a
document: done per recipient it would dominate the whole send. So each template version is
prepared once:

1. *flatten*: resolve `{% extends %}`, `{% block %}` and `{% include %}` into one source,
   every other Jinja construct passed through verbatim (wrapped in `{% raw %}` for a
   structural-only render pass);
2. *protect*: replace every remaining Jinja construct by an inert lowercase alphanumeric
   sentinel that HTML parsers leave alone;
3. *track*: wrap every href that may be an http(s) URL in the click filter
   (`mailer.linkrewrite`), so that per recipient a link costs one call;
4. *inline*: run premailer once on the protected document, then put the constructs back;
5. *compile* the result in Jinja's sandbox. Per recipient only step 5's template runs, and
   the open pixel, honeypot and unsubscribe footer are added to its output.

The same flattened source, converted to text with inscriptis (an HTML-to-text library), is
the text template when the step has no `.txt` template of its own.

The result equals per-message inlining as long as the CSS does not select on structure that
only control flow creates (`:nth-child` over a loop's rows); `tests/test_render.py` proves
the equality for every shipped template, and a construct that inlining would move or drop is
refused with a TemplateError rather than sent wrong.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import premailer
from inscriptis import get_text
from inscriptis.css_profiles import CSS_PROFILES
from inscriptis.model.config import ParserConfig
from jinja2.sandbox import SandboxedEnvironment
from mailer.sandbox import LimitedSandbox

from mailer.errors import TemplateError
from mailer.linkrewrite import CLICK_FILTER, CURRENT, UNSUBSCRIBE_VARIABLE, MessageLinks, click_filter, track_anchors, wrap_links

log = logging.getLogger("mailer.render")

# Tags whose effect is structural and resolved in the flatten pass; everything else waits
# for the per-recipient render.
_STRUCTURAL_TAGS = frozenset({"extends", "block", "endblock", "include"})
_CONSTRUCT_BEGIN = {"variable_begin": "variable_end", "block_begin": "block_end", "comment_begin": "comment_end"}
RECHECK_SECONDS = 1.0  # how often a cached step looks for edited template files
_TEXT_CONFIG = ParserConfig(css=CSS_PROFILES["relaxed"], display_links=True)


@dataclass(frozen=True)
class RenderedParts:
    subject: str
    html: str
    text: str


class TemplateEnvironment(LimitedSandbox):
    """Jinja's sandbox, with `lead.name` on a plain dict looked up as a key first.

    Lead data reaches templates as plain dicts (fields, CSV columns, API attributes), and
    the sandbox's generic lookup tries a Python attribute first, failing with an exception
    on every `{{ lead.first_name }}`: a third of the render time. A key of a plain dict is
    data, never Python internals, so looking it up first gives nothing away; anything else
    goes through the sandbox's own checks. (A CSV column named `items` wins over the dict
    method of that name, which is what a template author means.)
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)


class CompiledStep:
    """The per-recipient part of a step: three compiled templates, nothing else."""

    def __init__(
        self,
        *,
        subject: jinja2.Template,
        html: jinja2.Template,
        text: jinja2.Template | None,
        dependencies: Mapping[Path, float],
        inline_each: str | None = None,
        html_unsubscribe: bool = False,
        text_unsubscribe: bool = False,
    ) -> None:
        self.subject = subject
        self.html = html
        self.text = text
        # Why this template's CSS is inlined per message (slow, always right), or None.
        self.inline_each = inline_each
        # Whether the author placed {{ unsubscribe_url }} in each part; if not, a default
        # footer carries it.
        self.html_unsubscribe = html_unsubscribe
        self.text_unsubscribe = text_unsubscribe
        self.dependencies = dict(dependencies)
        self.checked_at = time.monotonic()

    def render(self, context: Mapping[str, Any], links: MessageLinks | None = None) -> RenderedParts:
        """The parts for one recipient; with `links`, tracked and with an unsubscribe link."""
        current = CURRENT.set(links)
        try:
            html = self.html.render(context)
            text = self.text.render(context) if self.text is not None else None
            subject = self.subject.render(context).strip()
        finally:
            CURRENT.reset(current)
        if self.inline_each is not None:
            html = inline_css(track_anchors(html, links))
        if text is None:
            text = get_text(html, _TEXT_CONFIG)  # before the honeypot: no trap in the text part
        if links is not None:
            html = links.decorate_html(html, footer=not self.html_unsubscribe)
            text = links.track_text(text, footer=not self.text_unsubscribe)
        return RenderedParts(subject=subject, html=html, text=text)

    def is_current(self) -> bool:
        """Whether no file this step was compiled from has changed since."""
        for path, mtime in self.dependencies.items():
            try:
                if path.stat().st_mtime != mtime:
                    return False
            except OSError:
                return False
        return True


class Renderer:
    """Compiles steps from a templates directory and caches them per template version."""

    def __init__(self, templates_dir: Path) -> None:
        self.templates_dir = templates_dir
        loader = jinja2.FileSystemLoader(str(templates_dir))
        common: dict[str, Any] = {"undefined": jinja2.StrictUndefined, "loader": loader}
        self.html_env = TemplateEnvironment(autoescape=True, **common)
        self.html_env.filters[CLICK_FILTER] = click_filter
        self.text_env = TemplateEnvironment(
            autoescape=False, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, **common
        )
        self._cache: dict[tuple[str, str | None, str], CompiledStep] = {}

    def step(self, *, subject: str, template: str, text_template: str | None) -> CompiledStep:
        """The compiled step, prepared once per version of its files."""
        key = (template, text_template, subject)
        compiled = self._cache.get(key)
        if compiled is None or self._stale(compiled):
            compiled = self._compile(subject=subject, template=template, text_template=text_template)
            self._cache[key] = compiled
        return compiled

    def _stale(self, compiled: CompiledStep) -> bool:
        """Whether the step's files changed; looked at once a second, not per message."""
        now = time.monotonic()
        if now - compiled.checked_at < RECHECK_SECONDS:
            return False
        compiled.checked_at = now
        return not compiled.is_current()

    def _compile(self, *, subject: str, template: str, text_template: str | None) -> CompiledStep:
        dependencies: dict[Path, float] = {}
        # Compile the originals first: their syntax errors carry the author's file and line.
        original = self._load(self.html_env, template, dependencies)
        flat = _Flattener(self.templates_dir, dependencies).flatten(template)
        nonce = _fresh_nonce(flat)
        protected, constructs = _protect(self.html_env, flat, nonce, template)
        sentinel = re.compile(rf"zq{nonce}q(\d+)z")
        tracked_flat = _restore(wrap_links(protected, constructs, sentinel, template), constructs, nonce, template)
        tracked_nonce = _fresh_nonce(tracked_flat)
        tracked, tracked_constructs = _protect(self.html_env, tracked_flat, tracked_nonce, template)
        unsafe = _unsafe_to_inline_once(tracked, tracked_constructs, tracked_nonce)
        html = original
        if unsafe is None:
            try:
                inlined = _restore(inline_css(tracked), tracked_constructs, tracked_nonce, template)
                html = self._from_string(self.html_env, inlined, template)
            except TemplateError as error:
                unsafe = error.problem
        if unsafe is not None:
            log.info("%s: CSS inlined per message (slower): %s", template, unsafe)
        text: jinja2.Template | None = None
        html_unsubscribe = _uses(self.html_env, flat, UNSUBSCRIBE_VARIABLE)
        text_unsubscribe = html_unsubscribe
        if text_template is not None:
            text = self._load(self.text_env, text_template, dependencies)
            text_flat = _Flattener(self.templates_dir, dependencies).flatten(text_template)
            text_unsubscribe = _uses(self.text_env, text_flat, UNSUBSCRIBE_VARIABLE)
        elif unsafe is None:
            # From the HTML before tracking: the text part's URLs are tracked per message.
            text = self._derive_text(protected, constructs, nonce, template)
        subject_template = self._from_string(self.text_env, subject, "subject")
        return CompiledStep(
            subject=subject_template,
            html=html,
            text=text,
            dependencies=dependencies,
            inline_each=unsafe,
            html_unsubscribe=html_unsubscribe,
            text_unsubscribe=text_unsubscribe,
        )

    def _derive_text(self, protected: str, constructs: list[tuple[str, str]], nonce: str, name: str) -> jinja2.Template | None:
        """A text template made from the HTML one, or None when the text must come per message.

        inscriptis lays tables out cell by cell, so a loop over table rows comes out with its
        tags and its body apart. When the constructs do not come back in their order, with
        every tag present, the text part is made from each rendered HTML instead: slower,
        never wrong. (Variables may vanish: those in <head> have no place in text.)
        """
        derived = get_text(protected, _TEXT_CONFIG)
        pattern = re.compile(rf"zq{nonce}q(\d+)z", re.IGNORECASE)
        seen = [int(m.group(1)) for m in pattern.finditer(derived)]
        tags = [i for i, (kind, _) in enumerate(constructs) if kind != "variable"]
        if seen != sorted(set(seen)) or not set(tags) <= set(seen):
            log.info("%s: text part derived per message (write a .txt template to make it faster)", name)
            return None
        source = pattern.sub(lambda m: constructs[int(m.group(1))][1], derived)
        try:
            return self.text_env.from_string(source)
        except jinja2.TemplateSyntaxError:
            return None

    def _load(self, env: jinja2.Environment, name: str, dependencies: dict[Path, float]) -> jinja2.Template:
        try:
            loaded = env.get_template(name)
        except jinja2.TemplateNotFound as error:
            raise TemplateError(
                f"template {error.name!r} not found",
                file=str(self.templates_dir / name),
                hint=f"put it in {self.templates_dir}",
            ) from None
        except jinja2.TemplateSyntaxError as error:
            raise TemplateError(
                error.message or "syntax error",
                file=error.filename or str(self.templates_dir / name),
                line=error.lineno,
                hint="fix the Jinja syntax",
            ) from None
        if loaded.filename:
            dependencies[Path(loaded.filename)] = os.stat(loaded.filename).st_mtime
        return loaded

    def _from_string(self, env: jinja2.Environment, source: str, name: str) -> jinja2.Template:
        try:
            return env.from_string(source)
        except jinja2.TemplateSyntaxError as error:
            raise TemplateError(
                error.message or "syntax error",
                file=name,
                line=error.lineno if name == "subject" else None,
                hint="fix the Jinja syntax" if name == "subject" else f"write a .txt template for {name}",
            ) from None


def render_error(error: Exception, *, template: str) -> TemplateError:
    """Turn an exception raised while rendering into a TemplateError with the template line."""
    file, line = template, None
    for frame, lineno in traceback.walk_tb(error.__traceback__):
        filename = frame.f_code.co_filename
        if filename.endswith((".html", ".txt", ".htm")):
            file, line = filename, lineno
        elif filename == "<template>":
            # the flattened source (layouts and includes resolved): its lines are not the
            # author's, so the error names the step's template without a line
            file, line = template, None
    problem = str(error) if isinstance(error, jinja2.TemplateError) else f"{type(error).__name__}: {error}"
    return TemplateError(problem, file=file, line=line, hint="check the variable names against the lead's fields and attributes")


class _Flattener:
    """Resolves template inheritance and includes into one source (see the module docstring)."""

    def __init__(self, templates_dir: Path, dependencies: dict[Path, float]) -> None:
        self.dependencies = dependencies
        self.lexer_env = jinja2.Environment()
        outer = self

        class WrappingLoader(jinja2.FileSystemLoader):
            def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
                source, filename, uptodate = super().get_source(environment, template)
                if filename:
                    outer.dependencies[Path(filename)] = os.stat(filename).st_mtime
                return outer.wrap(source, template), filename, uptodate

        # Sandboxed even though only extends/block/include run here: the flatten pass
        # evaluates the names in `{% extends %}` and `{% include %}`.
        self.env = SandboxedEnvironment(loader=WrappingLoader(str(templates_dir)), autoescape=False)

    def flatten(self, name: str) -> str:
        try:
            return self.env.get_template(name).render()
        except jinja2.TemplateError as error:
            raise TemplateError(
                f"cannot resolve layouts: {error}", file=name, hint="extends and include take a quoted template name"
            ) from None

    def wrap(self, source: str, name: str) -> str:
        """Pass every non-structural construct through the flatten render verbatim."""
        out: list[str] = []
        for kind, text, tag in _constructs(self.lexer_env, source, name):
            if kind == "data":
                out.append(text)
            elif kind == "comment":
                continue
            elif kind == "raw":
                # Keep the author's literal block literal for the second pass too.
                out.append("{% raw %}{% raw %}" + text + "{% endraw %}{{ '{% endraw %}' }}")
            elif tag in _STRUCTURAL_TAGS or (kind == "variable" and tag == "super"):
                out.append(text)
            else:
                out.append("{% raw %}" + text + "{% endraw %}")
        return "".join(out)


def _constructs(env: jinja2.Environment, source: str, name: str) -> list[tuple[str, str, str]]:
    """Split a template into (kind, source text, first name) pieces: data or one construct."""
    pieces: list[tuple[str, str, str]] = []
    current: list[str] = []
    kind = ""
    tag = ""
    end = ""
    try:
        tokens = list(env.lex(source, name))
    except jinja2.TemplateSyntaxError as error:
        raise TemplateError(error.message or "syntax error", file=name, line=error.lineno) from None
    for _, token, value in tokens:
        if not current:
            if token == "data":
                pieces.append(("data", value, ""))
                continue
            if token == "raw_begin":
                kind, end, tag = "raw", "raw_end", "raw"
                current.append("")  # the raw block's own tags are re-made by the caller
                continue
            kind = token.removesuffix("_begin")
            end = _CONSTRUCT_BEGIN[token]
            tag = ""
            current.append(value)
            continue
        if kind == "raw":
            if token == "raw_end":
                pieces.append(("raw", "".join(current), "raw"))
                current = []
            else:
                current.append(value)
            continue
        current.append(value)
        if token == "name" and not tag:
            tag = value
        if token == end:
            pieces.append((kind, "".join(current), tag))
            current = []
    return pieces


_MACRO_TAGS = frozenset({"import", "from", "macro", "call"})
_STRUCTURE_ATTRIBUTES = frozenset({"class", "id", "style"})  # what CSS selectors and inlining read
_ATTRIBUTE_OPEN = re.compile(r"""([\w:-]+)\s*=\s*(["'])[^"']*$""")


def _unsafe_to_inline_once(protected: str, constructs: list[tuple[str, str]], nonce: str) -> str | None:
    """Why inlining this template once could differ from inlining each message, or None.

    Macros render HTML that premailer never sees; a construct that makes a tag's name or
    attributes (`<p {% if vip %}class="a"{% endif %}>`, `class="{{ tier }}"`) changes what
    CSS selectors match per recipient. Those templates are inlined per message instead.
    """
    for kind, text in constructs:
        tag = text.lstrip("{%-+ ").split(" ", 1)[0].split("%", 1)[0]
        if kind == "block" and tag in _MACRO_TAGS:
            return f"it uses {{% {tag} %}}, whose HTML is only known per message"
    pattern = re.compile(rf"zq{nonce}q(\d+)z")
    for match in pattern.finditer(protected):
        before = protected[: match.start()]
        opened, closed = before.rfind("<"), before.rfind(">")
        if opened <= closed:
            continue  # in text, not inside a tag
        kind, text = constructs[int(match.group(1))]
        in_tag = before[opened:]
        attribute = _ATTRIBUTE_OPEN.search(in_tag)
        if attribute is None:
            return f"{text!r} makes part of a tag"
        name = attribute.group(1).lower()
        if name in _STRUCTURE_ATTRIBUTES and (kind != "variable" or name != "style"):
            return f"{text!r} decides a {name} attribute"
    return None


def _uses(env: jinja2.Environment, flat: str, name: str) -> bool:
    """Whether a flattened template reads the variable `name`."""
    try:
        return name in jinja2.meta.find_undeclared_variables(env.parse(flat))
    except jinja2.TemplateSyntaxError:
        return name in flat


def _fresh_nonce(source: str) -> str:
    while True:
        nonce = secrets.token_hex(4)
        if nonce not in source:
            return nonce


def _protect(env: jinja2.Environment, flat: str, nonce: str, name: str) -> tuple[str, list[tuple[str, str]]]:
    """Replace each Jinja construct by a sentinel `zq<nonce>q<index>z`; keep (kind, source)."""
    out: list[str] = []
    constructs: list[tuple[str, str]] = []
    for kind, text, _ in _constructs(env, flat, name):
        if kind == "data":
            out.append(text)
            continue
        if kind == "raw":
            text = "{% raw %}" + text + "{% endraw %}"
        out.append(f"zq{nonce}q{len(constructs)}z")
        constructs.append((kind, text))
    return "".join(out), constructs


def _restore(document: str, constructs: list[tuple[str, str]], nonce: str, name: str) -> str:
    """Put the constructs back after inlining.

    Every construct must come back; a variable may come back more than once
    (premailer copies a CSS rule into each element it applies to, `{{ colour }}` with it),
    but a tag (`{% if %}`, `{% for %}`) must come back exactly once and in order, or the
    template's structure would change.
    """
    pattern = re.compile(rf"zq{nonce}q(\d+)z", re.IGNORECASE)
    seen = [int(m.group(1)) for m in pattern.finditer(document)]
    tags = [i for i, (kind, _) in enumerate(constructs) if kind != "variable"]
    missing = sorted(set(range(len(constructs))) - set(seen))
    moved = [i for i in seen if constructs[i][0] != "variable"] != tags
    if missing or moved:
        culprit = constructs[missing[0]][1] if missing else "a tag"
        raise TemplateError(
            f"CSS inlining would {'drop' if missing else 'move'} {culprit!r}",
            file=name,
            hint="keep {% %} tags out of <style> and out of places HTML does not allow text",
        )
    return pattern.sub(lambda m: constructs[int(m.group(1))][1], document)


def inline_css(document: str) -> str:
    """Inline a document's CSS with premailer (once per template, or per message as a fallback)."""
    return str(
        premailer.Premailer(
            document,
            allow_network=False,  # never fetch <link> stylesheets named by a template
            disable_validation=True,
            remove_classes=False,
            cssutils_logging_level=logging.CRITICAL,
        ).transform()
    )
