"""The benchmarks of hwprune: each module runs from the repository root as
``python -m benchmarks.NAME ...`` (``python -m benchmarks.run`` runs the suite).

Not part of the installed package: the wheel holds ``hwprune`` and ``oracles`` only.
"""
