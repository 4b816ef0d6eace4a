"""The Thrift admin interface: ``Ejabthrift`` (what existing PHP site code calls) and the
``PresencedAdmin`` service that extends it, served on the reactor.

The IDL is ``thrift/presenced.thrift`` in the repository; the package ships the same file as
``presenced/presenced.thrift`` (a symlink in the checkout, a copy once installed) and thriftpy2
loads it at import time. :data:`admin` is the loaded module: ``admin.JabberUser``,
``admin.PresencedAdmin`` (the service every connection speaks), ``admin.BadJid``... It is
loaded on first use, not when the package is imported: the configuration reads
:mod:`presenced.thrift.options` and should not pay for parsing the IDL.
"""

from __future__ import annotations

import os
from typing import Any

IDL_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "presenced.thrift")


def __getattr__(name: str) -> Any:
    """``admin``, loaded once (``from presenced.thrift import admin`` comes here)."""
    if name != "admin":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import thriftpy2

    module = thriftpy2.load(IDL_PATH, module_name="presenced_admin_thrift")
    globals()["admin"] = module
    return module
