"""The errors qdq-passes raises for bad input: each says what is wrong and where, in one line."""

from __future__ import annotations

import onnx_ir

__all__ = [
    "QdqError",
    "UsageError",
    "PipelineSyntaxError",
    "UnknownPassError",
    "OptionError",
    "ModelLoadError",
    "ModelSaveError",
    "PreconditionFailed",
    "PassFailure",
    "VerificationError",
    "QuantizationError",
]


class QdqError(Exception):
    """Base of every error meant for the user; the CLI prints it without a traceback and exits 1."""

    exit_code = 1


class UsageError(QdqError):
    """The command line or pipeline asked for something that does not exist (exit 2)."""

    exit_code = 2


class PipelineSyntaxError(UsageError):
    """Malformed pipeline text; `str()` shows the text with a caret under the offending column."""

    def __init__(self, message: str, text: str, column: int) -> None:
        self.message = message
        self.text = text
        self.column = column
        super().__init__(self.render())

    def render(self) -> str:
        """The message, then the pipeline text, then a caret under the column."""
        return f"{self.message} at column {self.column + 1}\n  {self.text}\n  {' ' * self.column}^"


class UnknownPassError(UsageError):
    """A pipeline names a pass that is not registered."""


class OptionError(UsageError):
    """An unknown option key, or a value that does not convert or is out of bounds.

    ``key``: the option in pipeline spelling, when one is to blame (the parser puts its caret there).
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class ModelLoadError(QdqError):
    """A model file is missing, unreadable, not ONNX, truncated or unsafe."""


class ModelSaveError(QdqError):
    """The output model could not be written."""


class PreconditionFailed(QdqError, onnx_ir.passes.PreconditionError):
    """The model is not in the stage a pass needs (the message names the pass that provides it)."""


class PassFailure(QdqError):
    """A pass raised on a model; wraps the cause with the pass name."""


class VerificationError(QdqError):
    """The model failed the structural checks or the ONNX checker after a pass."""


class QuantizationError(QdqError):
    """Invalid quantization parameters or codes in the model; the message names the node."""
