"""Exceptions of the measurement layer.

One base class, a few subclasses; a command-line front end turns any
``OracleError`` into one line and exit code 2.
"""

from __future__ import annotations


class OracleError(Exception):
    """Base class of every error the oracles package raises on purpose."""


class OracleSpecError(OracleError, ValueError):
    """A spec string that does not parse, or a setting with a bad value."""


class UnknownOracleError(OracleSpecError):
    """A spec naming an oracle that is not registered."""


class BackendUnavailableError(OracleError, ImportError):
    """The runtime an oracle needs is not installed; the message names the extra."""


class DeviceUnavailableError(OracleError, RuntimeError):
    """The device asked for (CUDA, TensorRT provider) cannot run here.

    Raised instead of silently measuring on another device.
    """


class ModelInputError(OracleError, ValueError):
    """The model handed to an oracle cannot be read or has unresolved shapes."""


class MeasurementFailedError(OracleError, RuntimeError):
    """A backend crashed or timed out while measuring one candidate."""


class RemoteOracleError(OracleError, RuntimeError):
    """An oracle server (``hwprune serve``) that cannot be reached, refuses the token or the request."""


class CacheError(OracleError, ValueError):
    """A cache path that cannot hold a cache (a folder, for instance)."""


def error_class(name: object) -> type[OracleError] | None:
    """The error class of this module called ``name`` (as sent over a pipe or the wire), if any.

    Lets an error raised in a subprocess or on a server keep its type on this side.
    """
    for cls in _ERRORS:
        if cls.__name__ == name:
            return cls
    return None


_ERRORS: tuple[type[OracleError], ...] = (
    OracleError,
    OracleSpecError,
    UnknownOracleError,
    BackendUnavailableError,
    DeviceUnavailableError,
    ModelInputError,
    MeasurementFailedError,
    RemoteOracleError,
    CacheError,
)
