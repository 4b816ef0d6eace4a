"""presenced: a multi-protocol chat and presence server on one Twisted reactor."""

__version__ = "0.1.0"
