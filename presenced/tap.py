"""Command line of ``twistd presenced``: options, config loading, the service to run."""

from __future__ import annotations

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from presenced import config as configuration
from presenced import logs
from presenced.service import PresencedService


class Options(usage.Options):
    synopsis = "[--config PATH] [--data-dir DIR]"
    longdesc = (
        "Run presenced: XMPP c2s (5222), comet HTTP streams (8000), the Thrift admin "
        "interface (127.0.0.1:9000), the web admin console (127.0.0.1:8001) and the IRC cat "
        "bot (off by default), over one roster store. With no --config every key takes the "
        "default documented in config/presenced.toml: the embedded store in ./presenced-data."
    )
    optParameters = [
        ["config", "c", None, "TOML configuration file (default: built-in defaults)."],
        ["data-dir", "d", None,
         "Data directory: embedded store, TLS certificate, secret "
         "(overrides [server] data_dir; default ./presenced-data)."],
        ["workers", "w", None,
         "Worker processes on this machine (overrides [server] workers; needs the cluster)."],
    ]

    def postOptions(self) -> None:
        server: dict = {}
        if self["data-dir"]:
            server["data_dir"] = self["data-dir"]
        if self["workers"]:
            try:
                server["workers"] = int(self["workers"])
            except ValueError:
                raise usage.UsageError(f"--workers: {self['workers']!r} is not a number") from None
        overrides = {"server": server} if server else {}
        self["overrides"] = overrides  # applied again on every reload
        try:
            self["loaded"] = configuration.load(self["config"], overrides)
        except configuration.ConfigError as e:
            raise usage.UsageError(str(e)) from None
        self._cap_log_files()

    def _cap_log_files(self) -> None:
        """twistd keeps every rotated log file: keep ``[server] log_files`` of
        ``log_file_bytes`` each instead."""
        if self.parent is not None:
            server = self["loaded"].server
            logs.cap_twistd_log_file(self.parent, server.log_file_bytes, server.log_files)


@implementer(IServiceMaker, IPlugin)
class ServiceMaker:
    tapname = "presenced"
    description = "Multi-protocol chat and presence server (XMPP, comet, Thrift, IRC)."
    options = Options

    def makeService(self, options: Options) -> PresencedService:
        return PresencedService(options["loaded"], options["overrides"])
