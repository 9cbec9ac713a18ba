"""
The SQL of streams and cursors: the jobs the SQL stores hand their worker,
each a function of the connection, run inside the worker's transaction.
The statements are SQLite's, written to mean the same in PostgreSQL once
their parameters are renamed (L{secmsg.daemon.store.postgresql}).

A message is one row, whoever it is for; an identity's progress through a
stream is one cursor row.  So what a message costs to store does not grow
with its recipients, and what an acknowledgement costs grows with what it
acknowledges, never with the history kept: each query here walks an index
from a cursor's position, by (kind, target, id).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from typing import Any

from secmsg.daemon.store.waiting import Taken
from secmsg.daemon.store.worker import Connection
from secmsg.messages import (
    BROADCASTS,
    Draft,
    Kind,
    Pending,
    Retention,
    Stored,
    Stream,
    from_microseconds,
    inbox,
    to_microseconds,
    within_budget,
)

# A reader's stream holds what others sent to it, not what it said itself
# to a room or to everyone; and what it acknowledged out of order is read.
_UNREAD = """
SELECT m.id, m.kind, m.sender, m.target, m.body, m.created FROM messages m
WHERE m.kind = :kind AND m.target = :target AND m.id > :after
AND (m.kind = 'MSG' OR m.sender != :identity)
AND NOT EXISTS (
    SELECT 1 FROM acknowledged a WHERE a.identity = :identity AND a.message_id = m.id
)
ORDER BY m.id LIMIT :limit
"""

_UNREAD_TOTAL = """
SELECT count(*), coalesce(sum(length(CAST(m.body AS BLOB))), 0) FROM messages m
WHERE m.kind = :kind AND m.target = :target AND m.id > :after AND m.id <= :up_to
AND (m.kind = 'MSG' OR m.sender != :identity)
AND NOT EXISTS (
    SELECT 1 FROM acknowledged a WHERE a.identity = :identity AND a.message_id = m.id
)
"""

_NEXT = """
SELECT m.id FROM messages m
WHERE m.kind = :kind AND m.target = :target AND m.id > :after
AND (m.kind = 'MSG' OR m.sender != :identity)
ORDER BY m.id LIMIT 1
"""

_CURSORS = """
SELECT kind, target, since, acknowledged, sent FROM cursors
WHERE identity = ? AND reads = 1
"""
"""The cursors of the streams an identity reads: a room member that may
not read the room has one that nothing is kept for."""

_CURSOR = """
SELECT since, acknowledged FROM cursors
WHERE identity = ? AND kind = ? AND target = ? AND reads = 1
"""

_HEAD = "SELECT coalesce(max(id), 0) FROM messages"

_NEW_CURSOR = """
INSERT INTO cursors
    (identity, kind, target, since, acknowledged, sent, reads)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT DO NOTHING
"""

_ROOM_HISTORY = """
SELECT id, kind, sender, target, body, created FROM messages
WHERE kind = 'SAY' AND target = ? ORDER BY id DESC LIMIT ?
"""

_CONVERSATION = """
SELECT * FROM (
    SELECT id, kind, sender, target, body, created FROM messages
    WHERE kind = 'MSG' AND sender = ? AND target = ?
    UNION ALL
    SELECT id, kind, sender, target, body, created FROM messages
    WHERE kind = 'MSG' AND sender = ? AND target = ?
) AS both_ways ORDER BY id DESC LIMIT ?
"""
"""Each way of a conversation by the index on (kind, sender, target, id),
rather than a scan of every direct message."""

_WAITING = """
SELECT c.identity, c.kind, count(*), sum(length(CAST(m.body AS BLOB)))
FROM cursors c JOIN messages m
    ON m.kind = c.kind AND m.target = c.target AND m.id > c.acknowledged
WHERE c.reads = 1 AND (m.kind = 'MSG' OR m.sender != c.identity)
AND NOT EXISTS (
    SELECT 1 FROM acknowledged a WHERE a.identity = c.identity AND a.message_id = m.id
)
{where}
GROUP BY c.identity, c.kind
"""


def _stream(kind: str, target: str) -> Stream:
    return Stream(Kind(kind), target)


def stored(row: Sequence[Any]) -> Stored:
    message_id, kind, sender, target, body, created = row
    return Stored(
        message_id, Kind(kind), sender, target, body, from_microseconds(created)
    )


def append(connection: Connection, draft: Draft) -> Stored:
    """
    Append a message to its stream: one row, for however many readers.
    """
    (message_id,) = connection.execute(
        "INSERT INTO messages (kind, sender, target, body, created)"
        " VALUES (?, ?, ?, ?, ?) RETURNING id",
        (
            draft.kind.value,
            draft.sender,
            draft.target,
            draft.text,
            to_microseconds(draft.created),
        ),
    ).fetchone()
    return Stored.of(message_id, draft)


def add_identity(connection: Connection, identity: str, first_seen: int) -> None:
    """
    Know C{identity} from now: keep it, with its inbox and the broadcasts
    to read.
    """
    connection.execute(
        "INSERT INTO identities (name, first_seen) VALUES (?, ?)"
        " ON CONFLICT DO NOTHING",
        (identity, first_seen),
    )
    open_cursors(connection, identity, [inbox(identity), BROADCASTS])


def room_history(
    connection: Connection, room: str, limit: int, budget: int
) -> list[Stored]:
    """
    The newest messages said in C{room}, oldest first, within the budget.
    """
    return _newest(connection, _ROOM_HISTORY, (room, limit), limit, budget)


def conversation(
    connection: Connection, identity: str, other: str, limit: int, budget: int
) -> list[Stored]:
    """
    The newest direct messages between C{identity} and C{other}, each way,
    oldest first, within the budget.
    """
    parameters = (identity, other, other, identity, limit)
    return _newest(connection, _CONVERSATION, parameters, limit, budget)


def _newest(
    connection: Connection,
    query: str,
    parameters: tuple[str | int, ...],
    limit: int,
    budget: int,
) -> list[Stored]:
    """
    Run a query for the newest messages (newest first, as LIMIT needs) and
    give them oldest first, reading rows only until the budget is spent.
    """
    rows = connection.execute(query, parameters)
    return within_budget((stored(row) for row in rows), limit, budget)


def between(connection: Connection, after: int, up_to: int, limit: int) -> list[Stored]:
    """
    Up to C{limit} messages of every stream with ids above C{after} and at
    most C{up_to}, oldest first: a segment of the cluster's messages that a
    daemon missed.
    """
    rows = connection.execute(
        "SELECT id, kind, sender, target, body, created FROM messages"
        " WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
        (after, up_to, limit),
    )
    return [stored(row) for row in rows]


def open_cursors(
    connection: Connection,
    identity: str,
    streams: Iterable[Stream],
    reads: bool = True,
) -> None:
    """
    Start C{identity} reading C{streams} from what comes next: what was
    appended before is not for it.  An inbox is read from its beginning,
    since every message in it was for its identity.  A cursor it has
    already is left as it is.

    @param reads: whether what comes is kept for it: not for a room member
        whose session may not read the room.
    """
    (head,) = connection.execute(_HEAD).fetchone()
    connection.executemany(
        _NEW_CURSOR,
        [
            (identity, kind.value, target, since, since, since, int(reads))
            for kind, target in streams
            for since in (0 if kind is Kind.DIRECT else head,)
        ],
    )


def start_reading(connection: Connection, identity: str, stream: Stream) -> None:
    """
    Keep what comes in C{stream} for C{identity} from now, if nothing was.
    """
    (head,) = connection.execute(_HEAD).fetchone()
    connection.execute(
        "UPDATE cursors SET reads = 1, since = ?, acknowledged = ?, sent = ?"
        " WHERE identity = ? AND kind = ? AND target = ? AND reads = 0",
        (head, head, head, identity, *_key(stream)),
    )


def close_cursor(
    connection: Connection, identity: str, stream: Stream
) -> tuple[int, int]:
    """
    Stop C{identity} reading C{stream} (a room it parts); return how many
    messages, and bytes, it leaves unacknowledged there.
    """
    row = connection.execute(_CURSOR, (identity, *_key(stream))).fetchone()
    left = (0, 0)
    if row is not None:
        left = _unread_total(connection, identity, stream, row[1], None)
    key = (identity, *_key(stream))
    connection.execute(
        "DELETE FROM cursors WHERE identity = ? AND kind = ? AND target = ?", key
    )
    connection.execute(
        "DELETE FROM acknowledged WHERE identity = ? AND kind = ? AND target = ?", key
    )
    return left


def _key(stream: Stream) -> tuple[str, str]:
    return stream.kind.value, stream.target


def unread(
    connection: Connection,
    identity: str,
    after: int,
    limit: int,
    readable: frozenset[str],
) -> list[Pending]:
    """
    Up to C{limit} messages above C{after} that C{identity} has not
    acknowledged, oldest first, from its inbox, the broadcasts and those of
    its rooms in C{readable}: a page from each stream, merged.
    """
    pages = []
    for kind, target, _, acknowledged, sent in connection.execute(
        _CURSORS, (identity,)
    ).fetchall():
        if kind == Kind.ROOM.value and target not in readable:
            continue
        rows = connection.execute(
            _UNREAD,
            {
                "identity": identity,
                "kind": kind,
                "target": target,
                "after": max(after, acknowledged),
                "limit": limit,
            },
        )
        pages.append([Pending(stored(row), row[0] <= sent) for row in rows])
    return list(heapq.merge(*pages, key=lambda p: p.message.id))[:limit]


def mark_sent(connection: Connection, marks: Iterable[tuple[str, Stream, int]]) -> None:
    """
    Move each C{(identity, stream, id)} cursor's sent position up to C{id}.
    """
    connection.executemany(
        "UPDATE cursors SET sent = max(sent, ?)"
        " WHERE identity = ? AND kind = ? AND target = ?",
        [(sent, identity, *_key(stream)) for identity, stream, sent in marks],
    )


def acknowledge_up_to(
    connection: Connection,
    identity: str,
    message_id: int,
    readable: frozenset[str],
) -> list[Taken]:
    """
    Acknowledge, in C{identity}'s inbox, the broadcasts and its rooms in
    C{readable}, everything up to C{message_id} that was sent to it; return
    how many messages of each kind that was and their bytes.
    """
    taken: list[Taken] = []
    for kind, target, _, acknowledged, sent in connection.execute(
        _CURSORS, (identity,)
    ).fetchall():
        if kind == Kind.ROOM.value and target not in readable:
            continue
        up_to = min(message_id, sent)
        if up_to <= acknowledged:
            continue
        stream = _stream(kind, target)
        count, size = _unread_total(connection, identity, stream, acknowledged, up_to)
        _move_to(connection, identity, stream, up_to)
        taken.append((stream.kind, count, size))
    return taken


def acknowledge_one(
    connection: Connection,
    identity: str,
    message_id: int,
    readable: frozenset[str],
) -> list[Taken] | None:
    """
    Acknowledge one message of C{identity}'s (of a room, one of
    C{readable}); return its kind, 1 and its bytes, or nothing if it was
    acknowledged already, or L{None} if it is none of its (or is gone).
    """
    row = connection.execute(
        "SELECT kind, target, sender, length(CAST(body AS BLOB))"
        " FROM messages WHERE id = ?",
        (message_id,),
    ).fetchone()
    if row is None:
        return None
    kind, target, sender, size = row
    if kind != Kind.DIRECT.value and sender == identity:
        return None
    if kind == Kind.ROOM.value and target not in readable:
        return None
    position = connection.execute(_CURSOR, (identity, kind, target)).fetchone()
    if position is None or message_id <= position[0]:
        return None
    stream = _stream(kind, target)
    if message_id <= position[1] or not _note_acknowledged(
        connection, identity, stream, message_id
    ):
        return []
    _compact(connection, identity, stream, position[1])
    return [(stream.kind, 1, size)]


def _note_acknowledged(
    connection: Connection, identity: str, stream: Stream, message_id: int
) -> bool:
    """
    Keep that C{message_id} is acknowledged out of order; return whether it
    was not already.
    """
    cursor = connection.execute(
        "INSERT INTO acknowledged (identity, message_id, kind, target)"
        " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (identity, message_id, *_key(stream)),
    )
    return bool(cursor.rowcount == 1)


def _compact(
    connection: Connection, identity: str, stream: Stream, acknowledged: int
) -> None:
    """
    Move the cursor past the messages acknowledged out of order that now
    follow it without a gap: a step for each, however long the stream.
    """
    position = acknowledged
    parameters = {"identity": identity, "kind": stream.kind.value}
    parameters["target"] = stream.target
    while True:
        row = connection.execute(_NEXT, {**parameters, "after": position}).fetchone()
        if row is None or not _is_noted(connection, identity, row[0]):
            break
        position = row[0]
    if position != acknowledged:
        _move_to(connection, identity, stream, position)


def _is_noted(connection: Connection, identity: str, message_id: int) -> bool:
    return (
        connection.execute(
            "SELECT 1 FROM acknowledged WHERE identity = ? AND message_id = ?",
            (identity, message_id),
        ).fetchone()
        is not None
    )


def _move_to(
    connection: Connection, identity: str, stream: Stream, position: int
) -> None:
    """
    Put a cursor's acknowledged position at C{position}, and forget what
    was acknowledged out of order up to it.
    """
    connection.execute(
        "UPDATE cursors SET acknowledged = ?, sent = max(sent, ?)"
        " WHERE identity = ? AND kind = ? AND target = ?",
        (position, position, identity, *_key(stream)),
    )
    connection.execute(
        "DELETE FROM acknowledged WHERE identity = ? AND message_id <= ?"
        " AND kind = ? AND target = ?",
        (identity, position, *_key(stream)),
    )


def _unread_total(
    connection: Connection,
    identity: str,
    stream: Stream,
    after: int,
    up_to: int | None,
) -> tuple[int, int]:
    """
    How many messages of C{stream} above C{after} (up to C{up_to}, or all)
    C{identity} has not acknowledged, and their bytes.
    """
    count, size = connection.execute(
        _UNREAD_TOTAL,
        {
            "identity": identity,
            "kind": stream.kind.value,
            "target": stream.target,
            "after": after,
            "up_to": (1 << 62) if up_to is None else up_to,
        },
    ).fetchone()
    return count, size


def waiting_totals(
    connection: Connection, created_before: int | None = None
) -> dict[tuple[str, Kind], tuple[int, int]]:
    """
    What waits unacknowledged for each identity (or only what was created
    before C{created_before}, in microseconds): read at startup, and by
    the purge for what its age limit removes.
    """
    if created_before is None:
        rows = connection.execute(_WAITING.format(where=""))
    else:
        rows = connection.execute(
            _WAITING.format(where="AND m.created < ?"), (created_before,)
        )
    return {
        (identity, Kind(kind)): (count, size) for identity, kind, count, size in rows
    }


_BEYOND_COUNT = """
DELETE FROM messages WHERE id IN (
    SELECT id FROM (
        SELECT id, sender, target,
            ROW_NUMBER() OVER (PARTITION BY target ORDER BY id DESC) AS newer
        FROM messages WHERE kind = :kind
    ) AS ranked
    WHERE newer > :keep
    AND NOT EXISTS (
        SELECT 1 FROM cursors c
        WHERE c.kind = :kind AND c.target = ranked.target AND c.reads = 1
        AND ranked.id > c.acknowledged
        AND (c.kind = 'MSG' OR ranked.sender != c.identity)
        AND NOT EXISTS (
            SELECT 1 FROM acknowledged a
            WHERE a.identity = c.identity AND a.message_id = ranked.id
        )
    )
)
"""
"""Messages of a kind beyond the newest N of their room or recipient, but
none that a reader of their stream has yet to acknowledge."""


def purge(
    connection: Connection, oldest: int, retention: Retention
) -> tuple[int, dict[tuple[str, Kind], tuple[int, int]]]:
    """
    Remove what retention no longer keeps; return how many messages went,
    and for each identity what of it went unacknowledged.  Only age removes
    what someone has yet to acknowledge; the count limits never do.
    """
    unread = waiting_totals(connection, oldest)
    removed = connection.execute(
        "DELETE FROM messages WHERE created < ?", (oldest,)
    ).rowcount
    for kind, keep in (
        (Kind.ROOM, retention.room_max),
        (Kind.DIRECT, retention.mailbox_max),
    ):
        removed += connection.execute(
            _BEYOND_COUNT, {"kind": kind.value, "keep": keep}
        ).rowcount
    connection.execute(
        "DELETE FROM acknowledged WHERE NOT EXISTS"
        " (SELECT 1 FROM messages m WHERE m.id = acknowledged.message_id)"
    )
    return removed, unread


def memberships(connection: Connection) -> list[tuple[str, str, bool]]:
    """
    Each C{(identity, room, reads)} membership, read at startup.
    """
    return [
        (identity, room, bool(reads))
        for identity, room, reads in connection.execute(
            "SELECT identity, target, reads FROM cursors WHERE kind = 'SAY'"
        )
    ]


def identity_now(
    connection: Connection, identity: str
) -> tuple[bool, list[tuple[str, bool]], dict[Kind, tuple[int, int]]]:
    """
    What the data says of C{identity}: whether it is known, its rooms and
    whether it reads each, and what waits for it of each kind.
    """
    rows = connection.execute(
        "SELECT kind, target, reads FROM cursors WHERE identity = ?", (identity,)
    ).fetchall()
    known = any(kind == Kind.DIRECT.value for kind, _, _ in rows)
    rooms = [(room, bool(reads)) for kind, room, reads in rows if kind == "SAY"]
    waiting = connection.execute(
        _WAITING.format(where="AND c.identity = ?"), (identity,)
    )
    totals = {Kind(kind): (count, size) for _, kind, count, size in waiting}
    return known, rooms, totals


def known_identities(connection: Connection) -> set[str]:
    """
    The identities known: those with an inbox, read at startup.
    """
    return {
        name
        for (name,) in connection.execute(
            "SELECT identity FROM cursors WHERE kind = 'MSG'"
        )
    }
