"""Error bases the CLI turns into one line on stderr (no traceback) and an exit code.

* :class:`UserError` — bad input (a file, an option, a value): exit 2.
* :class:`SetupError` — the set-up named cannot work as it is (a device that does not answer, a
  worker that does not start, an emulation this machine lacks): exit 2. A mixin, so runtime
  errors keep their own base classes.
* :class:`RunFailed` — a run that failed while running (a request that failed after its re-plans):
  exit 1. Also a mixin.
"""


class UserError(ValueError):
    pass


class SetupError(Exception):
    pass


class RunFailed(Exception):
    pass
