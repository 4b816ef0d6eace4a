"""``?commands`` typed in IRC: built-ins answered from presenced, the rest by the handler.

Built-ins read the shared core (now playing, who is online, rosters); every other command
goes to the configured handler program (:mod:`presenced.irc.handler`). Answers go back where
the command came from (the channel, or the nick for a private message).
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Awaitable, Callable, Optional

from twisted.internet import defer
from twisted.logger import Logger

from presenced.irc.handler import HandlerRequest, run_handler
from presenced.users import BadUser

if TYPE_CHECKING:
    from presenced.core import Core
    from presenced.irc.bot import IRCBot

log = Logger()

Builtin = Callable[[list[str]], Awaitable[list[str]]]
# An answer: its lines (cut at max_reply_lines) and a status line that is always shown.
Answer = tuple[list[str], Optional[str]]


class CommandError(Exception):
    """A command used wrongly; the message is the answer."""


class Commands:
    """Parses a prefixed message and answers it."""

    def __init__(self, core: "Core", bot: "IRCBot"):
        self.core = core
        self.bot = bot
        settings = bot.settings
        self.prefix = settings.command_prefix
        self.handler = settings.handler
        self.running = defer.DeferredSemaphore(settings.handler_max_running)
        self.builtins: dict[str, tuple[Builtin, str]] = {
            "np": (self.now_playing, "np <user>: what the user is listening to"),
            "online": (self.online, "online [user]: who is online"),
            "friends": (self.friends, "friends <user>: the user's friends"),
            "help": (self.help, "help: this list"),
        }
        core.metrics.describe("presenced_irc_commands_total", "counter",
                              "IRC commands run, by kind (builtin, handler, unknown; refused: "
                              "a private command from outside the auth channel)")

    def dispatch(self, sender: str, channel: str, respond_to: str, message: str) -> None:
        """Run the command in ``message`` (which starts with the prefix) and reply."""
        raw = message[len(self.prefix):].strip()
        command, _, args = raw.partition(" ")
        if not command:
            return
        nick, _, mask = sender.partition("!")
        user, _, host = mask.partition("@")
        entry = self.builtins.get(command.lower())
        if entry is not None:
            kind = "builtin"
            d = defer.ensureDeferred(entry[0](args.split()))
            d.addCallback(lambda lines: (lines, None))
        elif self.handler:
            kind = "handler"
            request = HandlerRequest(nick=nick, user=user, host=host,
                                     channel=channel if channel != self.bot.nickname else "",
                                     respond_to=respond_to, command=command,
                                     args=args.strip(), raw=message)
            d = defer.ensureDeferred(self.run(request))
        else:
            kind = "unknown"
            d = defer.succeed(([], f"unknown command {self.prefix}{command}; "
                                   f"{self.prefix}help lists the commands"))
        self.core.metrics.inc("presenced_irc_commands_total", kind=kind)
        d.addErrback(self.failed, command)
        d.addCallback(lambda answer: self.bot.reply(respond_to, *answer))

    def failed(self, failure: object, command: str) -> Answer:
        error = getattr(failure, "value", None)
        if isinstance(error, (CommandError, BadUser)):
            return [], f"{self.prefix}{command}: {error}"
        log.failure("IRC command {command} failed", failure, command=command)
        return [], f"{self.prefix}{command} failed: {error}"

    # --- the handler --------------------------------------------------------------------

    async def run(self, request: HandlerRequest) -> Answer:
        settings = self.bot.settings
        if shutil.which(self.handler) is None:
            raise CommandError(f"handler {self.handler!r} is not an executable program")
        if self.running.tokens == 0 and len(self.running.waiting) >= settings.handler_max_running:
            raise CommandError("busy: too many commands running, try again later")
        await self.running.acquire()
        try:
            result = await run_handler(self.handler, request, settings.handler_timeout,
                                       settings.handler_max_output_bytes)
        finally:
            self.running.release()
        problem = result.problem(settings.handler_timeout, settings.handler_max_output_bytes)
        return result.lines, f"{self.prefix}{request.command}: {problem}" if problem else None

    # --- built-ins ----------------------------------------------------------------------

    def one_user(self, args: list[str], usage: str) -> str:
        if len(args) != 1:
            raise CommandError(f"usage: {self.prefix}{usage}")
        return self.core.user(args[0])

    async def now_playing(self, args: list[str]) -> list[str]:
        user = self.one_user(args, "np <user>")
        tune = await self.core.now_playing(user)
        if tune is None:
            return [f"{user}: nothing playing"]
        return [f"{user} is listening to {tune.describe()}"]

    async def online(self, args: list[str]) -> list[str]:
        router = self.core.router
        if not args:
            return [f"{router.online_users()} users online, {router.session_count()} sessions"]
        user = self.one_user(args, "online [user]")
        sessions = router.sessions(user)
        if not sessions:
            return [f"{user} is offline"]
        where = ", ".join(f"{s.protocol}/{s.label}" for s in sessions)
        return [f"{user} is online ({where})"]

    async def friends(self, args: list[str]) -> list[str]:
        user = self.one_user(args, "friends <user>")
        roster = await self.core.store.get_roster(user)
        friends = sorted(item.jid for item in roster if item.subscription == "both")
        if not friends:
            return [f"{user} has no friends yet"]
        return [f"{user} has {len(friends)} friends: {', '.join(friends)}"]

    async def help(self, args: list[str]) -> list[str]:
        lines = [self.prefix + text for _, text in self.builtins.values()]
        if self.handler:
            lines.append(f"other {self.prefix}commands go to the handler")
        return [" | ".join(lines)]
