"""The root of every error Berth raises.

Each error carries what happened (``message``) and what the user can do about it
(``hint``); the cause is kept through ``raise ... from``.
"""

from __future__ import annotations


class BerthError(Exception):
    """Base class for all Berth errors: a message a user can read, and a hint."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class InputError(BerthError):
    """The user's input (a port spec, an image reference, a limit...) is not valid."""
