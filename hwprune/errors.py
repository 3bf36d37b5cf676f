"""hwprune's exceptions. The CLI turns any ``HwpruneError`` into one line and exit code 2."""

from __future__ import annotations


class HwpruneError(Exception):
    """Base class of every error hwprune raises on purpose."""


class ConfigError(HwpruneError, ValueError):
    """Bad user input: an option, a name, a file."""


class UnknownNameError(ConfigError):
    """A model, dataset, agent or criterion name that is not registered."""


class BudgetError(ConfigError):
    """A budget that does not parse or names a quantity no oracle measures."""


class CheckpointError(ConfigError):
    """A checkpoint that cannot be loaded safely or does not match the model."""


class DataError(ConfigError):
    """A dataset that cannot be found or read."""


class OutputError(ConfigError):
    """An output path that is the wrong kind of thing (a folder for a file, a file inside a
    file), that may not be written, or that exists and would be replaced without --overwrite."""


class RunDirError(OutputError):
    """An output folder that holds another run, or a run folder that cannot be resumed."""


class InfeasibleBudgetError(HwpruneError):
    """No allowed policy meets a budget; ``smallest`` holds the smallest value measured."""

    def __init__(self, message: str, *, smallest: dict | None = None) -> None:
        super().__init__(message)
        self.smallest = smallest or {}


class OutputShapeError(HwpruneError):
    """A pruned model whose output shapes differ from the dense model's, where they must not."""


class ExportError(HwpruneError):
    """A model that cannot be exported, or an export that does not match the torch model."""


class WriteError(HwpruneError, OSError):
    """A file that could not be written (disk full, no permission); nothing half-written is left.

    Still an OSError (``errno``, ``strerror``, ``filename`` as the OS gave them) for code
    that handles those; its message is one line naming the file.
    """

    def __init__(
        self,
        message: str,
        *,
        errno: int | None = None,
        strerror: str | None = None,
        filename: str | None = None,
    ) -> None:
        OSError.__init__(self, errno, strerror, filename)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple:
        # OSError pickles its (errno, strerror) args; the message is what must survive
        # the trip back from a worker process.
        return _write_error, (self.message, self.errno, self.strerror, self.filename)


def _write_error(message: str, errno: int | None, strerror: str | None, filename: str | None):
    return WriteError(message, errno=errno, strerror=strerror, filename=filename)
