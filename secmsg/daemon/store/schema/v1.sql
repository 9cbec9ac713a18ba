-- secmsg message store, schema version 1.
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

CREATE TABLE mailbox (
    recipient TEXT NOT NULL,
    message_id INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    acknowledged INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (recipient, message_id)
) WITHOUT ROWID;
CREATE INDEX mailbox_by_message ON mailbox (message_id);

CREATE TABLE identities (
    name TEXT PRIMARY KEY,
    first_seen INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO version (version) VALUES (1);
