"""
What Tab completes at the console's prompt: a command name in the first
word, an identity or a room where the command's grammar
(L{secmsg.wire.COMMANDS}) has one, and nothing in free text, so that Tab
after C{MSG alice } never writes a command name into the message.

The identities are those the server's C{WHO} has listed and those seen in
what arrived (one who has gone offline can still be sent a message); the
rooms those C{ROOMS} has listed, joined or seen.
Only names that are valid identities or rooms are kept, so that nothing a
server sends reaches the input line unescaped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from secmsg import wire

IDENTITY = "identity"
ROOM = "room"

_SPACES = re.compile(" +")

MAX_NAMES = 10_000
"""Identities, and rooms, kept for completion each; past it the least
recently seen go, so that a server listing millions cannot make the
console's memory grow without end or one Tab take seconds."""


def argument_kinds(verb: str, position: int) -> frozenset[str]:
    """
    What the argument at C{position} (0 for the first after the verb) of
    C{verb} is, as its usage line says: L{IDENTITY}, L{ROOM}, both
    (C{HISTORY #room|<identity>}), or neither (text, a number, a word).
    """
    spec = wire.COMMANDS.get(verb.upper())
    if spec is None:
        return frozenset()
    arguments = spec.usage.split(" ")[1:]
    if position >= len(arguments):
        return frozenset()
    kinds = set()
    for choice in arguments[position].strip("[]").split("|"):
        if choice == "<identity>":
            kinds.add(IDENTITY)
        elif choice.startswith("#"):
            kinds.add(ROOM)
    return frozenset(kinds)


def _keep(recent: dict[str, None], names: Iterable[str]) -> None:
    """
    Keep C{names} as the most recently seen in C{recent} (oldest first),
    dropping the oldest past L{MAX_NAMES}.
    """
    for name in names:
        recent.pop(name, None)
        recent[name] = None
    while len(recent) > MAX_NAMES:
        del recent[next(iter(recent))]


class Names:
    """
    The identities and rooms the console knows of, for completion: at
    most L{MAX_NAMES} of each, the most recently seen.
    """

    def __init__(self) -> None:
        self._identities: dict[str, None] = {}
        self._rooms: dict[str, None] = {}

    @property
    def identities(self) -> set[str]:
        """
        The identities kept.
        """
        return set(self._identities)

    @property
    def rooms(self) -> set[str]:
        """
        The rooms kept.
        """
        return set(self._rooms)

    def take_who(self, lines: list[wire.ReplyLine]) -> None:
        """
        Keep the identities a C{WHO} reply lists.
        """
        listed = (line.text for line in lines[:-1])
        _keep(self._identities, (n for n in listed if wire.NAME_TOKEN.fullmatch(n)))

    def take_rooms(self, lines: list[wire.ReplyLine]) -> None:
        """
        Keep the rooms a C{ROOMS} reply lists (C{#room count}).
        """
        rooms = (line.text.split(" ", 1)[0] for line in lines[:-1])
        _keep(self._rooms, (room for room in rooms if wire.ROOM_NAME.fullmatch(room)))

    def saw(self, push: wire.PushLine) -> None:
        """
        Keep the sender, and the room, of a message that arrived.
        """
        if push.kind in ("MSG", "BROADCAST") and len(push.fields) == 4:
            self._identity(push.fields[2])
        elif push.kind == "SAY" and len(push.fields) == 5:
            self.joined(push.fields[2])
            self._identity(push.fields[3])

    def joined(self, room: str) -> None:
        """
        Keep a room we joined or saw.
        """
        if wire.ROOM_NAME.fullmatch(room.lower()):
            _keep(self._rooms, [room.lower()])

    def _identity(self, name: str) -> None:
        if wire.NAME_TOKEN.fullmatch(name):
            _keep(self._identities, [name])

    def of(self, kinds: frozenset[str]) -> list[str]:
        """
        The names of the kinds asked for, sorted.
        """
        names: set[str] = set()
        if IDENTITY in kinds:
            names.update(self._identities)
        if ROOM in kinds:
            names.update(self._rooms)
        return sorted(names)


class CommandCompleter(Completer):
    """
    prompt_toolkit's completer for the console.

    @param commands: the command names to offer in the first word (HELP's,
        and the console's own C{/quit}).
    @param asked: told the kinds of name about to be offered, so that the
        console can refresh them (a C{WHO} now and then).
    """

    def __init__(
        self,
        commands: Iterable[str],
        names: Names,
        asked: Callable[[frozenset[str]], None] = lambda kinds: None,
    ) -> None:
        self._commands = list(commands)
        self._names = names
        self._asked = asked

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterator[Completion]:
        typed = document.text_before_cursor.lstrip(" ")
        verb, space, rest = typed.partition(" ")
        if not space:
            for command in self._commands:
                if command.lower().startswith(verb.lower()):
                    yield Completion(command, start_position=-len(verb))
            return
        *before, current = _SPACES.split(rest.lstrip(" "))
        kinds = argument_kinds(verb, len(before))
        if not kinds:
            return
        self._asked(kinds)
        for name in self._names.of(kinds):
            if name.lower().startswith(current.lower()):
                yield Completion(name, start_position=-len(current))
