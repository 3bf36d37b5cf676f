"""The one place hwprune overrides a private method of Stable-Baselines3, and the versions it fits.

AMC explores by drawing each action from a normal distribution around the actor's action,
truncated to the action bounds (``TruncatedNormalNoise.sample``). SB3's off-policy algorithms
only *add* noise to the actor's action (``ActionNoise.__call__``), in
``OffPolicyAlgorithm._sample_action``, a private method; no public hook (callback, policy class,
replay-buffer class) sees both the actor's action and the noise before the action is stored,
so that method is overridden here, and only here.

``SB3_VERSIONS`` is the range of Stable-Baselines3 versions this override was checked against;
pyproject.toml pins the same range, and ``tests/hwprune/test_sb3_compat.py`` fails, naming the
method, when an installed version lacks it or changed its parameters.
"""

from __future__ import annotations

import functools
import logging
import re
from abc import abstractmethod
from importlib.metadata import PackageNotFoundError, version

import numpy as np
from stable_baselines3 import DDPG, TD3
from stable_baselines3.common.noise import ActionNoise

log = logging.getLogger(__name__)

__all__ = ["PRIVATE_OVERRIDES", "SB3_VERSIONS", "SampledNoise", "noise_sampling", "supported"]

#: The Stable-Baselines3 versions the override below was checked against (pyproject pins these).
SB3_VERSIONS = ">=2.3,<2.10"

#: Each private SB3 method overridden here: (module:class, method, its parameters).
PRIVATE_OVERRIDES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "stable_baselines3.common.off_policy_algorithm:OffPolicyAlgorithm",
        "_sample_action",
        ("self", "learning_starts", "action_noise", "n_envs"),
    ),
)


def _release(text: str) -> tuple[int, ...]:
    """The leading numbers of a version string: "2.9.2" -> (2, 9, 2), "2.10.0a1" -> (2, 10, 0)."""
    parts = []
    for piece in text.split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def supported(installed: str) -> bool:
    """Whether a Stable-Baselines3 version string lies in ``SB3_VERSIONS``."""
    low, high = (_release(bound.lstrip("<>=")) for bound in SB3_VERSIONS.split(","))
    return low <= _release(installed) < high


class SampledNoise(ActionNoise):
    """Exploration noise that draws the action itself around the actor's (``sample(mean)``, in
    SB3's scaled action space [-1, 1]) instead of being added to it."""

    @abstractmethod
    def sample(self, mean: np.ndarray) -> np.ndarray: ...


def _with_sampled_noise(base: type) -> type:
    class Sampled(base):  # type: ignore[misc, valid-type]
        __doc__ = f"SB3's {base.__name__} whose exploration draws from a ``SampledNoise``."

        def _sample_action(
            self, learning_starts: int, action_noise: ActionNoise | None = None, n_envs: int = 1
        ) -> tuple[np.ndarray, np.ndarray]:
            if not isinstance(action_noise, SampledNoise):
                return super()._sample_action(learning_starts, action_noise, n_envs)
            action, buffer_action = super()._sample_action(learning_starts, None, n_envs)
            if self.num_timesteps < learning_starts:
                return action, buffer_action  # warm-up: uniform random actions, no noise
            scaled = action_noise.sample(buffer_action)
            return self.policy.unscale_action(scaled), scaled

    Sampled.__name__ = Sampled.__qualname__ = f"Sampled{base.__name__}"
    return Sampled


_SAMPLED: dict[str, type] = {"ddpg": _with_sampled_noise(DDPG), "td3": _with_sampled_noise(TD3)}


@functools.cache
def _check_version() -> None:
    try:
        installed = version("stable-baselines3")
    except PackageNotFoundError:
        installed = "unknown"
    if installed == "unknown" or not supported(installed):
        log.warning(
            "stable-baselines3 %s is outside the versions AMC's exploration was checked "
            "against (%s)", installed, SB3_VERSIONS,
        )  # fmt: skip


def noise_sampling(algo: str) -> type:
    """SB3's DDPG (``"ddpg"``) or TD3 (``"td3"``) exploring with a ``SampledNoise``."""
    _check_version()
    return _SAMPLED[algo]
