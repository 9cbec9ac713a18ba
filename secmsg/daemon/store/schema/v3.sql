-- secmsg message store, schema version 3: what a new database is made of.
--
-- messages holds every accepted MSG, SAY and BROADCAST once, whoever it
-- is for: (kind, target) names the stream it is appended to, an
-- identity's inbox (target is the recipient of a MSG), a room's timeline
-- (the room of a SAY) or the broadcasts ('' for a BROADCAST); created is
-- in microseconds since the epoch, UTC.
--
-- cursors holds what each identity reads and how far it has got: one row
-- for its inbox and one for the broadcasts from the moment it is known,
-- and one for each room it is a member of (JOIN makes it, PART drops it).
-- The messages of the stream with ids above since are for the identity,
-- but for what it sent itself to a room or to everyone; acknowledged: it
-- has acknowledged every one up to this id; sent: the highest id pushed to
-- one of its sessions, so that a later delivery of one up to it is marked
-- as a repeat; reads: 0 for a member of a room whose last session might
-- not read it (the room rules), for which nothing said there is kept.  acknowledged holds what was acknowledged out of order,
-- above its cursor's acknowledged, until the cursor passes it.
CREATE TABLE version (version INTEGER NOT NULL);

CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('MSG', 'SAY', 'BROADCAST')),
    sender TEXT NOT NULL,
    target TEXT NOT NULL,
    body TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE INDEX messages_by_created ON messages (created);
CREATE INDEX messages_by_target ON messages (kind, target, id);
CREATE INDEX messages_by_pair ON messages (kind, sender, target, id);

CREATE TABLE identities (
    name TEXT PRIMARY KEY,
    first_seen INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE cursors (
    identity TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('MSG', 'SAY', 'BROADCAST')),
    target TEXT NOT NULL,
    since INTEGER NOT NULL,
    acknowledged INTEGER NOT NULL,
    sent INTEGER NOT NULL,
    reads INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (identity, kind, target)
) WITHOUT ROWID;
CREATE INDEX cursors_by_stream ON cursors (kind, target);

CREATE TABLE acknowledged (
    identity TEXT NOT NULL,
    message_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    PRIMARY KEY (identity, message_id)
) WITHOUT ROWID;

INSERT INTO version (version) VALUES (3);
