"""The Thrift admin interface: ``Ejabthrift`` (what existing PHP site code calls) and the
``PresencedAdmin`` service that extends it, served on the reactor.

The IDL is ``thrift/presenced.thrift`` in the repository; the package ships the same file as
``presenced/presenced.thrift`` (a symlink in the checkout, a copy once installed) and thriftpy2
loads it at import time. :data:`admin` is the loaded module: ``admin.JabberUser``,
``admin.PresencedAdmin`` (the service every connection speaks), ``admin.BadJid``...
"""

from __future__ import annotations

import os

import thriftpy2

IDL_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "presenced.thrift")

admin = thriftpy2.load(IDL_PATH, module_name="presenced_admin_thrift")
