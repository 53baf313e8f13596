"""The metric: a named number computed from per-example evaluation records.

Task types evaluate batches into per-example records (see
:meth:`mubench.api.TaskType.evaluate_batch`): columns such as ``loss``,
``confidence``, ``correct``, ``score``, ``generation`` and ``reference``, one entry
per example. A metric names the columns it ``needs``; the evaluator asks the task
only for what the card's metrics need (generation only when a metric reads it).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

SCOPES = ("split", "forget")
FORGOTTEN = ("chance", "retrain", "lower", "higher")


@dataclass(frozen=True)
class Metric:
    """A metric or attack that a plugin registers (hook ``mubench_metrics``) and a card selects by name.

    - ``scope`` ``split``: ``compute(records)`` of one split, reported as
      ``test_<name>``, ``forget_<name>`` and ``retain_<name>``.
    - ``scope`` ``forget``: ``compute(records_by_split, seed)`` over the ``forget``,
      ``retain`` and ``test`` records (an attack on D_f), reported as ``forget_<name>``.

    ``higher_is_better`` is the direction for a model's utility (on D_test and D_r;
    for a ``forget`` metric, for forgetting). ``forgotten`` says what a value on D_f
    means once forgotten: ``chance`` (reaching :attr:`chance`, or the task's chance
    when None), ``retrain`` (matching the retrained model), ``lower`` or ``higher``.
    ``bounds`` are the values it can take (``None``: unbounded above); ``mubench
    validate`` refuses a result whose value lies outside them.
    """

    name: str
    compute: Callable
    higher_is_better: bool
    needs: frozenset = field(default_factory=frozenset)
    scope: str = "split"
    forgotten: str = "lower"
    chance: float | None = None
    description: str = ""
    bounds: tuple[float, float | None] = (0.0, 1.0)

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise ValueError(f"metric '{self.name}': scope must be one of {SCOPES}, got {self.scope!r}")
        if self.forgotten not in FORGOTTEN:
            raise ValueError(f"metric '{self.name}': forgotten must be one of {FORGOTTEN}, got {self.forgotten!r}")
        object.__setattr__(self, "needs", frozenset(self.needs))

    def describe(self) -> dict:
        """What a result records about the metric, so that a reader knows its direction."""
        return {"higher_is_better": self.higher_is_better, "scope": self.scope, "forgotten": self.forgotten,
                "needs": sorted(self.needs)}
