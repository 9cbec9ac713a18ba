-- secmsg message store, schema version 2: what a new database is made of.
--
-- messages holds every accepted MSG, SAY and BROADCAST; target is the
-- recipient of a MSG, the room of a SAY, and '' for a BROADCAST; created is
-- in microseconds since the epoch, UTC.  mailbox holds one row for each
-- identity that is to receive a message, until retention removes it:
-- delivered once it has been pushed to one of its sessions, acknowledged
-- once that identity has said ACK.
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

CREATE TABLE mailbox (
    recipient TEXT NOT NULL,
    message_id INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    acknowledged INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (recipient, message_id)
) WITHOUT ROWID;
CREATE INDEX mailbox_by_message ON mailbox (message_id);

CREATE TABLE identities (
    name TEXT PRIMARY KEY,
    first_seen INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO version (version) VALUES (2);
