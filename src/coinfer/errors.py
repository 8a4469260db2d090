"""Error bases the CLI turns into one line on stderr (no traceback) and an exit code.

Every one derives from :class:`CoinferError` (exported as ``coinfer.CoinferError``).

* :class:`UserError` — bad input (a file, an option, a value): exit 2.
* :class:`SetupError` — the set-up named cannot work as it is (a device that does not answer, a
  worker that does not start, an emulation this machine lacks): exit 2. A mixin, so runtime
  errors keep their own base classes.
* :class:`RunFailed` — a run that failed while running (a request that failed after its re-plans):
  exit 1. Also a mixin.
"""


from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import Any


class CoinferError(Exception):
    """The base of every error coinfer raises on purpose (``except coinfer.CoinferError``); the
    classes below and each module's own errors (PlanError, ClusterError, RuntimeFailure, …) derive from it."""


class UserError(CoinferError, ValueError):
    pass


def check_keys(d: Any, allowed: AbstractSet[str], where: str, required: AbstractSet[str] = frozenset(), *,
               error: Callable[[str], Exception] = UserError) -> None:
    """``d`` is a JSON object with only ``allowed`` keys and every ``required`` one; else ``error(line)``
    naming ``where`` (e.g. ``stages[0]``) and the fields (the plan and profile readers' check)."""
    if not isinstance(d, dict):
        raise error(f"{where} must be a JSON object, got {type(d).__name__}")
    extra = set(d) - set(allowed)
    if extra:
        raise error(f"unknown field(s) {sorted(extra)} in {where}; allowed: {sorted(allowed)}")
    missing = set(required) - set(d)
    if missing:
        raise error(f"missing field(s) {sorted(missing)} in {where}")


class SetupError(CoinferError):
    pass


class RunFailed(CoinferError):
    pass
