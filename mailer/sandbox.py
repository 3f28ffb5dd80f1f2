"""Jinja's sandbox with limits: a template may not run for long, loop forever or grow huge.

`jinja2.sandbox.SandboxedEnvironment` already refuses what reaches Python's internals
(`''.__class__.__mro__`, `cycler.__init__.__globals__`, `self._TemplateReference__context`,
`"{0.__class__}".format(x)`, `|attr('__class__')`) and caps `range()` at 100,000 items. It
does not limit time or size: nested loops run 10^10 times, `'x' * 10**9` allocates a
gigabyte (at compile time even, as a folded constant), `'x'.center(10**9)` and
`range(10**5)|join('x' * 10**5)` too. `LimitedSandbox` adds, per render:

- a deadline (`max_seconds`) and an iteration budget (`max_iterations`) that every
  `{% for %}` draws from, checked in the loop itself, so a loop without calls is caught too;
- a size cap (`max_output` characters) on the output, on every `~` concatenation, on the
  result of every call and filter, and on `*` repetition before it happens;
- refusals before the allocation: a call whose largest text or list times its largest
  number (a width, a count) or times its second largest text or list passes `max_product`
  (`'x'.center(10**9)`, join, replace, indent), a `%` or `{:…}` width of seven digits or
  more, a `%*` width past `max_output`, a `**` past `max_int_bits` bits;
- no `lipsum` (it writes as much text as asked).

Any of these raises `TemplateLimitError`, a `SecurityError`, which the renderer reports as
a TemplateError for that message.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any

import jinja2
from jinja2 import nodes, pass_context
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

# Gmail clips messages past 102 KB; nothing legitimate in one part comes near a million
# characters, and a million is still only a few megabytes of memory.
MAX_OUTPUT = 1_000_000
MAX_PRODUCT = 16_000_000  # largest × second largest input of one call
MAX_ITERATIONS = 250_000  # loop iterations per render; a digest of 500 rows × 3 loops is 1,500
MAX_SECONDS = 1.0  # a render takes well under a millisecond
MAX_INT_BITS = 4096  # larger than any amount of money, date or count a template shows
CHECK_EVERY = 256  # iterations between looks at the clock and the output so far
# A width or precision of seven digits or more in a %-format or a {:…} format spec.
_HUGE_WIDTH = re.compile(r"%[-#0 +]*\d{7,}|%[-#0 +]*\d*\.\d{7,}|\{[^{}]*:[^{}]*\d{7,}[^{}]*\}")


class TemplateLimitError(SecurityError):
    """A template went past a time, iteration or size limit."""


class _Budget:
    """What one render may still spend, and the output it has produced so far."""

    def __init__(self, environment: LimitedSandbox) -> None:
        self.environment = environment
        self.deadline = time.monotonic() + environment.max_seconds
        self.iterations = 0
        self.output: list[str] = []
        self.measured = 0  # pieces of `output` already counted
        self.size = 0

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(f"the template ran past its {self.environment.max_seconds:g} s limit")
        output = self.output
        if len(output) > self.measured:
            self.size += sum(map(len, output[self.measured :]))
            self.measured = len(output)
            if self.size > self.environment.max_output:
                raise TemplateLimitError(f"the template's output passed {self.environment.max_output:,} characters")


# What a template can make long: text, lists, sequences (a Mapping's size is not its output,
# and an Undefined raises on len()).
_SIZED = (str, bytes, list, tuple, range, set, frozenset)
_BUDGET: ContextVar[_Budget | None] = ContextVar("mailer_template_budget", default=None)


_GUARD = "_mailer_guard_iteration"  # a filter name no template can write: it starts with "_"


def _guarded(iterable: nodes.Node) -> nodes.Node:
    """`iterable|_mailer_guard_iteration`, as a node: a filter is called directly, a function
    through the sandbox's slower `call` (and Jinja allows no node types of our own)."""
    if isinstance(iterable, nodes.Filter) and iterable.name == _GUARD:
        return iterable  # already guarded: the generator may visit a loop twice
    return nodes.Filter(iterable, _GUARD, [], [], None, None, lineno=iterable.lineno)


class _LimitedCodeGenerator(CodeGenerator):
    """Jinja's code generator with every `~` passing through the size cap."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.guard_size(")
        super().visit_Concat(node, frame)
        self.write(")")


class LimitedTemplate(jinja2.Template):
    environment: LimitedSandbox

    def render(self, *args: Any, **kwargs: Any) -> str:
        """Render within the environment's limits; pieces are counted as they are produced."""
        budget = _Budget(self.environment)
        token = _BUDGET.set(budget)
        try:
            context = self.new_context(dict(*args, **kwargs))
            try:
                # list.extend appends each piece as the generator yields it, so the budget's
                # checks inside loops see the output grow.
                budget.output.extend(self.root_render_func(context))
                budget.check()
                return self.environment.concat(budget.output)
            except Exception:
                self.environment.handle_exception()
        finally:
            _BUDGET.reset(token)


class LimitedSandbox(SandboxedEnvironment):
    """SandboxedEnvironment with time, iteration and size limits (see the module docstring)."""

    code_generator_class = _LimitedCodeGenerator
    template_class = LimitedTemplate
    intercepted_binops = frozenset({"*", "**", "%"})
    max_output = MAX_OUTPUT
    max_product = MAX_PRODUCT
    max_iterations = MAX_ITERATIONS
    max_seconds = MAX_SECONDS
    max_int_bits = MAX_INT_BITS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.globals.pop("lipsum", None)
        self.filters = {name: self._limited_filter(f) for name, f in self.filters.items()}
        self.filters[_GUARD] = self._guard_iteration

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """The template's syntax tree with every loop's iterable guarded (before code
        generation, which collects the filters a template uses from the tree)."""
        template = super()._parse(source, name, filename)
        for loop in template.find_all(nodes.For):
            loop.iter = _guarded(loop.iter)
        return template

    # -- what the compiled templates call ------------------------------------------------

    @pass_context  # never folded into a constant at compile time
    def _guard_iteration(self, context: Context, iterable: Iterable[Any]) -> Iterator[Any]:
        budget = self._budget()
        limit = self.max_iterations
        for item in iterable:
            budget.iterations += 1
            if budget.iterations % CHECK_EVERY == 0:
                if budget.iterations > limit:
                    raise TemplateLimitError(f"the template's loops ran more than {limit:,} times")
                budget.check()
            yield item

    def guard_size(self, value: Any) -> Any:
        if isinstance(value, _SIZED) and len(value) > self.max_output:
            raise TemplateLimitError(f"a value of {len(value):,} items passed the {self.max_output:,} limit")
        return value

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805  (Jinja's own signature)
        __self._budget().check()
        if args or kwargs:
            __self._check_inputs((getattr(__obj, "__self__", None), *args, *kwargs.values()))
        return __self.guard_size(super().call(__context, __obj, *args, **kwargs))

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for sequence, count in ((left, right), (right, left)):
                if isinstance(sequence, _SIZED) and type(count) is int and len(sequence) * count > self.max_output:
                    raise TemplateLimitError(f"repeating {len(sequence):,} items {count:,} times passes the {self.max_output:,} limit")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
                if left.bit_length() * right > self.max_int_bits:
                    raise TemplateLimitError(f"a power of more than {self.max_int_bits} bits")
        elif operator == "%" and isinstance(left, str):
            self._check_format(left)
            values = right if isinstance(right, tuple) else (right,)
            if "*" in left and any(isinstance(v, int) and v > self.max_output for v in values):
                raise TemplateLimitError("a %* width of a million or more")
        return self.guard_size(super().call_binop(context, operator, left, right))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        self._check_format(value.__self__)
        return wrapper

    # -- checks --------------------------------------------------------------------------

    def _budget(self) -> _Budget:
        budget = _BUDGET.get()
        if budget is None:  # rendered another way than LimitedTemplate.render: limits still apply
            budget = _Budget(self)
            _BUDGET.set(budget)
        return budget

    def _check_inputs(self, values: Iterable[Any]) -> None:
        """Refuse a call whose output could grow as the product of two of its inputs.

        Numbers alone are data (`"{:,}".format(lead.revenue)`), never refused; a number
        beside a text or a list may be a width or a count.
        """
        largest = second = number = 0
        for value in values:
            if isinstance(value, _SIZED):
                length = len(value)
                if length > largest:
                    largest, second = length, largest
                elif length > second:
                    second = length
            elif type(value) is int and value > number:
                number = value
        if largest * max(number, second) > self.max_product:
            raise TemplateLimitError(f"a call on {largest:,} items with {max(number, second):,} could pass the size limit")

    def _check_format(self, template: str) -> None:
        if _HUGE_WIDTH.search(template):
            raise TemplateLimitError("a format width or precision of a million or more")

    def _limited_filter(self, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)  # keeps jinja_pass_arg (pass_context and the like)
        def limited(*args: Any, **kwargs: Any) -> Any:
            self._check_inputs((*args, *kwargs.values()))
            return self.guard_size(function(*args, **kwargs))

        return limited
