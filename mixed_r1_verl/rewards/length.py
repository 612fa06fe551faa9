"""The overlong penalty of DAPO (arXiv 2503.14476), opt-in on top of Mixed-Reward: a response that runs into
the last `buffer` tokens before its cap loses up to `factor` of its reward, linearly, so the policy learns
to answer before the rollout cuts it off (a cut response has mostly not given its answer yet)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

OVERLONG_SETTING = "reward.reward_kwargs.overlong_buffer_cfg"
OVERLONG_KEYS = ("enable", "len", "penalty_factor", "log")
# What `log` adds to each sample's extra info: the penalty (0 or less) and whether there was one (1 or 0).
OVERLONG_REWARD, OVERLONG = "overlong_reward", "overlong"


def overlong_penalty(length: int, cap: int, buffer: int, factor: float) -> float:
    """0 up to `buffer` tokens before `cap`, then falling linearly to -`factor` at the cap (0 to -factor)."""
    start = max(cap - buffer, 0)
    return -factor * min(max(length - start, 0), buffer) / buffer


@dataclass(frozen=True)
class OverlongBuffer:
    """verl's DAPO `overlong_buffer_cfg`, the same keys and meaning: `len` tokens before the cap the penalty
    starts, `penalty_factor` is its size at the cap, and `log` reports `overlong_reward` and `overlong`."""

    len: int
    penalty_factor: float
    log: bool

    @classmethod
    def from_options(cls, options: Mapping | None, response_length: int) -> OverlongBuffer | None:
        """The buffer `options` enable, None when they do not; ValueError naming the key that is wrong."""
        if options is None:
            return None
        unknown = sorted(set(options) - set(OVERLONG_KEYS))
        if unknown:
            raise ValueError(f"{OVERLONG_SETTING}.{unknown[0]} is not one of its keys ({', '.join(OVERLONG_KEYS)})")
        if not isinstance(options.get("enable", False), bool):
            raise ValueError(f"{OVERLONG_SETTING}.enable must be true or false, got {options['enable']!r}")
        if not options.get("enable", False):
            return None
        length, factor, log = options.get("len"), options.get("penalty_factor", 1.0), options.get("log", False)
        if isinstance(length, bool) or not isinstance(length, int) or not 0 < length <= response_length:
            raise ValueError(
                f"{OVERLONG_SETTING}.len must be a whole number of tokens from 1 to the response length "
                f"({response_length}, actor_rollout_ref.rollout.response_length), got {length!r}"
            )
        if isinstance(factor, bool) or not isinstance(factor, int | float) or not 0 <= factor < float("inf"):
            raise ValueError(f"{OVERLONG_SETTING}.penalty_factor must be a number of 0 or more, got {factor!r}")
        if not isinstance(log, bool):
            raise ValueError(f"{OVERLONG_SETTING}.log must be true or false, got {log!r}")
        return cls(length, float(factor), log)

    def penalty(self, length: int, cap: int) -> float:
        return overlong_penalty(length, cap, self.len, self.penalty_factor)
