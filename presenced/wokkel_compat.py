"""Lets wokkel 18.0.0, the last release, import on current Twisted.

wokkel reads ``twisted.python.compat._PY3`` (removed in Twisted 21.2) and imports
``twisted.python.constants`` (removed in 24.11, now the ``constantly`` package). Both are
supplied here, before wokkel is first imported; every module of ours that uses wokkel imports
this one first. Nothing else of wokkel needs patching.
"""

import sys

import constantly
from twisted.python import compat

if not hasattr(compat, "_PY3"):
    compat._PY3 = True
sys.modules.setdefault("twisted.python.constants", constantly)
