"""What every stage's config is built from: `Strict` (frozen, unknown keys refused, so a typo in a YAML key fails
naming the field) and `ActorPoolSize` (how many actors a Ray Data stage runs)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _pool_size(value: int | tuple[int, int]) -> int | tuple[int, int]:
    low, high = (value, value) if isinstance(value, int) else value
    if low < 1 or high < low:
        raise ValueError(f"an actor pool size is n >= 1 or [min, max] with 1 <= min <= max, not {value!r}")
    return value


# A fixed number of actors, or [min, max]: Ray Data starts `min` and adds actors up to `max` as the cluster grows
# and the queue backs up (the autoscaler adds nodes when the pending actors ask for them).
ActorPoolSize = Annotated[int | tuple[int, int], AfterValidator(_pool_size)]


def pool_max(size: int | tuple[int, int]) -> int:
    """The most actors an `ActorPoolSize` runs."""
    return size if isinstance(size, int) else size[1]
