-- From version 2 to 3: a cursor per identity and stream instead of a
-- mailbox row per recipient and message.  Every message that waited
-- unacknowledged in a mailbox waits still: an identity with room messages
-- waiting becomes a member of that room (membership is the identity's
-- from version 3 on), and a cursor stops just before the first message it
-- has not acknowledged, with what it acknowledged beyond kept as
-- acknowledged out of order, and what of the stream beyond was never in
-- its mailbox (said in a room while it was out of it) too, so that none
-- of that comes to it as new.
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

CREATE TEMP TABLE readers AS
    SELECT name AS identity FROM identities
    UNION SELECT recipient FROM mailbox;

CREATE TEMP TABLE streams AS
    SELECT identity, 'MSG' AS kind, identity AS target FROM readers
    UNION SELECT identity, 'BROADCAST', '' FROM readers
    UNION SELECT DISTINCT b.recipient, m.kind, m.target
        FROM mailbox b JOIN messages m ON m.id = b.message_id
        WHERE m.kind = 'SAY' AND b.acknowledged = 0;

CREATE TEMP TABLE positions AS
    SELECT s.identity, s.kind, s.target,
        coalesce(
            (SELECT min(b.message_id) - 1
                FROM mailbox b JOIN messages m ON m.id = b.message_id
                WHERE b.recipient = s.identity AND m.kind = s.kind
                AND m.target = s.target AND b.acknowledged = 0),
            (SELECT coalesce(max(id), 0) FROM messages)
        ) AS acknowledged,
        (SELECT coalesce(max(b.message_id), 0)
            FROM mailbox b JOIN messages m ON m.id = b.message_id
            WHERE b.recipient = s.identity AND m.kind = s.kind
            AND m.target = s.target AND b.delivered = 1) AS sent
    FROM streams s;

INSERT INTO cursors (identity, kind, target, since, acknowledged, sent)
    SELECT identity, kind, target,
        CASE kind WHEN 'MSG' THEN 0 ELSE acknowledged END,
        acknowledged, max(acknowledged, sent)
    FROM positions;

INSERT INTO acknowledged (identity, message_id, kind, target)
    SELECT c.identity, m.id, m.kind, m.target
    FROM cursors c JOIN messages m
        ON m.kind = c.kind AND m.target = c.target AND m.id > c.acknowledged
    WHERE (c.kind = 'MSG' OR m.sender != c.identity)
    AND NOT EXISTS (
        SELECT 1 FROM mailbox b
        WHERE b.recipient = c.identity AND b.message_id = m.id
        AND b.acknowledged = 0
    );

DROP TABLE temp.positions;
DROP TABLE temp.streams;
DROP TABLE temp.readers;
DROP TABLE mailbox;
UPDATE version SET version = 3;
