"""Errors a user can act on. The CLI prints their message as one line, never a traceback."""


class SwitchLLMError(Exception):
    """Base class: bad input, missing files, unknown names. The message says what is wrong."""


class UnknownRouterError(SwitchLLMError):
    pass


class UnknownModelError(SwitchLLMError):
    """`short`: the same in one short line (no list of known models), for reports and logs."""

    def __init__(self, message: str, short: str | None = None) -> None:
        super().__init__(message)
        self.short = short or message


class DataError(SwitchLLMError):
    """A data file is missing, empty, or malformed (the message names file and line)."""


class CardError(SwitchLLMError):
    """A router card on disk is missing, corrupt, or incompatible."""
