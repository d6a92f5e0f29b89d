"""User-facing errors: what went wrong, where, and how to fix it."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data. `where` is 'file:line' or 'file row N'; `fix` says what to do."""

    def __init__(self, what: str, where: str = "", fix: str = ""):
        self.what, self.where, self.fix = what, where, fix
        msg = f"{where}: {what}" if where else what
        if fix:
            msg += f". Fix: {fix}"
        super().__init__(msg)
