"""hwprune: hardware-aware neural-network pruning to budgets measured on the deployment runtime."""

__version__ = "0.1.0"
