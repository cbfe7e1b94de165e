"""The errors a person can fix. Each message names the bad input or setting and the fix; the
``ipsynergy`` command prints it without a traceback and exits with the class's status, so a
scheduler can tell them apart. Anything else is a bug and keeps its traceback."""
from __future__ import annotations


class UserError(Exception):
    """The input or the configuration stops the job (status 1 unless a subclass says)."""
    exit_code = 1


class ConfigError(UserError, ValueError):
    """A setting, an override or a platform mapping is wrong (status 2)."""
    exit_code = 2


class MissingInput(UserError, FileNotFoundError):
    """A folder, table or table slice the job reads is not there: run the stage that writes it
    (status 3)."""
    exit_code = 3


class NotEnoughData(UserError):
    """Too little history or revenue for what the job must fit (status 4)."""
    exit_code = 4


class InputRejected(UserError):
    """The input was read and refused: mapping problems, a quarantine share above the limit,
    identifiers without a key, a champion that needs features the data lacks (status 5)."""
    exit_code = 5
