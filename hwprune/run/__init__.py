"""The prune run as stages over one RunContext: load, dense, search, choose, finetune, verify
(+ repair), export, report. ``run.run`` composes them; resume is the same sequence."""

from hwprune.run.context import RunContext, RunLock, prepare_run_dir
from hwprune.run.result import BudgetCheck, PruneResult
from hwprune.run.run import run

__all__ = ["RunContext", "RunLock", "prepare_run_dir", "BudgetCheck", "PruneResult", "run"]
