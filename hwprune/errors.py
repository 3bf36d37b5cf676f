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


class ExportError(HwpruneError):
    """A model that cannot be exported, or an export that does not match the torch model."""
