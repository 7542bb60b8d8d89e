"""`QdqPass`: the base of every qdq-passes pass, an ``onnx_ir.passes.InPlacePass``.

A pass declares, as class attributes:

* ``argument``: its pipeline name (kebab-case), ``summary``: one line for ``--list-passes``;
* ``Options``: a frozen dataclass of typed options (see :mod:`qdq_passes.infra.options`);
* ``statistics``: ``{name: description}`` of the counters it bumps with :meth:`QdqPass.bump`;
* ``precondition``: optionally, a method that raises :class:`PreconditionFailed` naming the pass
  that puts the model in the stage this pass needs;
* ``prerequisites``: optionally, the passes to run right before this one (the pass manager runs
  each as a step of its own, so ``--timing``, ``--print-ir-after-all`` and ``--pass-statistics``
  show it as ``name (for this-pass)``; called on its own, the pass runs them first).

It implements only ``call(model) -> PassResult`` and returns an honest ``modified``. Because it is
an ``InPlacePass`` it also runs inside a plain ``onnx_ir.passes.PassManager``.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import onnx_ir

from qdq_passes.infra.errors import PreconditionFailed, QdqError
from qdq_passes.infra.options import NoOptions, build_options, format_options

__all__ = ["QdqPass"]

logger = logging.getLogger(__name__)


class QdqPass(onnx_ir.passes.InPlacePass):
    """Base class of qdq-passes passes; subclasses set the class attributes below."""

    argument: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    statistics: ClassVar[dict[str, str]] = {}

    def __init__(self, options: Any = None, **kwargs: Any) -> None:
        """Create the pass from an ``Options`` instance or from keyword options (snake or kebab case)."""
        super().__init__()
        if options is not None and kwargs:
            raise TypeError("give either an Options instance or keyword options, not both")
        if options is None:
            options = build_options(self.Options, {k: _raw(v) for k, v in kwargs.items()}, where=self.argument) if kwargs else self.Options()
        elif not isinstance(options, self.Options):
            raise TypeError(f"{self.argument}: options must be {self.Options.__qualname__}, got {type(options).__name__}")
        self.options = options
        self.stats: dict[str, int] = dict.fromkeys(self.statistics, 0)

    def __call__(self, model_or_result: Any, /) -> onnx_ir.passes.PassResult:
        """Run the pass's prerequisites, then the pass; ``modified`` if any of them changed the model."""
        model = model_or_result.model if isinstance(model_or_result, onnx_ir.passes.PassResult) else model_or_result
        changed = [p(model).modified for p in self.prerequisites(model)]
        result = self.run_alone(model)
        return onnx_ir.passes.PassResult(result.model, result.modified or any(changed))

    def run_alone(self, model: onnx_ir.Model) -> onnx_ir.passes.PassResult:
        """Run the pass without its prerequisites (resetting its statistics first)."""
        self.stats = dict.fromkeys(self.statistics, 0)
        return super().__call__(model)

    def prerequisites(self, model: onnx_ir.Model) -> list[QdqPass]:
        """The passes to run on ``model`` right before this one (none by default)."""
        return []

    @property
    def details(self) -> list[str]:
        """Extra report lines of the last run (e.g. per-block figures), printed with the statistics."""
        return []

    def bump(self, statistic: str, by: int = 1) -> None:
        """Add to one of the declared statistics."""
        if statistic not in self.statistics:
            raise KeyError(f"{self.argument}: statistic '{statistic}' is not declared")
        self.stats[statistic] += by

    def requires(self, model: onnx_ir.Model) -> None:
        """Check the pass's preconditions (subclasses override :meth:`precondition`)."""
        try:
            self.precondition(model)
        except (QdqError, ValueError) as exc:  # a malformed node met while checking: the same one line
            raise PreconditionFailed(f"{self.argument}: {exc}") from None

    def precondition(self, model: onnx_ir.Model) -> None:
        """Raise :class:`PreconditionFailed` if the model is not in the stage this pass needs."""

    def __str__(self) -> str:
        """The pass in canonical pipeline syntax, every option spelled out."""
        text = format_options(self.options)
        return f"{self.argument}{{{text}}}" if text else self.argument

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self}>"


def _raw(value: Any) -> Any:
    """Python keyword values pass through the same conversion as pipeline text."""
    if isinstance(value, (list, tuple)):
        return [_raw(v) for v in value]
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    return repr(value) if isinstance(value, float) else str(value)
