-- secmsg message store on PostgreSQL, schema version 3: what a new
-- database is made of.  The same tables as SQLite's v3.sql, in
-- PostgreSQL's types; see there what each holds.
--
-- Message ids come from one sequence, and every transaction takes the
-- append lock (postgresql.py) before it takes an id, so ids commit in the
-- order they are taken: a cursor that has read up to an id never passes
-- one still to commit, whichever daemon appends it.
--
-- head holds the id of the last message appended: each transaction that
-- appends moves it, under the same lock, so that what it appended is the
-- segment (head before, head after], which the daemons of a cluster tell
-- each other and by which each finds a segment it has missed.
CREATE TABLE version (version integer NOT NULL);

CREATE TABLE head (position bigint NOT NULL);
INSERT INTO head (position) VALUES (0);

-- bus_key holds the key the daemons of a cluster seal their bus messages
-- with (cluster/envelope.py): made at random with the schema, so that only
-- who can read this database can speak on the bus.
CREATE TABLE bus_key (secret bytea NOT NULL);

CREATE TABLE messages (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('MSG', 'SAY', 'BROADCAST')),
    sender text NOT NULL,
    target text NOT NULL,
    body text NOT NULL,
    created bigint NOT NULL
);
CREATE INDEX messages_by_created ON messages (created);
CREATE INDEX messages_by_target ON messages (kind, target, id);
CREATE INDEX messages_by_pair ON messages (kind, sender, target, id);

CREATE TABLE identities (
    name text PRIMARY KEY,
    first_seen bigint NOT NULL
);

CREATE TABLE cursors (
    identity text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('MSG', 'SAY', 'BROADCAST')),
    target text NOT NULL,
    since bigint NOT NULL,
    acknowledged bigint NOT NULL,
    sent bigint NOT NULL,
    reads integer NOT NULL DEFAULT 1,
    PRIMARY KEY (identity, kind, target)
);
CREATE INDEX cursors_by_stream ON cursors (kind, target);

CREATE TABLE acknowledged (
    identity text NOT NULL,
    message_id bigint NOT NULL,
    kind text NOT NULL,
    target text NOT NULL,
    PRIMARY KEY (identity, message_id)
);

INSERT INTO version (version) VALUES (3);
