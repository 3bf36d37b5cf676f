"""The task interface under its documented name; it lives in ``hwprune.tasks``."""

from __future__ import annotations

from hwprune.tasks import *  # noqa: F403  (every public name, as documented)
from hwprune.tasks import __all__  # noqa: F401
