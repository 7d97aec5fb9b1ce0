"""Automatic connection recovery: the user's settings (:class:`Recovery`) and the policy units.

:mod:`puka.recovery.policy` holds the pure parts: the settings, the backoff
between attempts and the order in which hosts are tried.
"""

from .policy import Recovery

__all__ = ["Recovery"]
