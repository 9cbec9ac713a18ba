-- From version 1 to 2: remember which messages were delivered, so that a
-- redelivery can be marked as one, and find a room's or a conversation's
-- history by index.  Acknowledged messages were delivered.
ALTER TABLE mailbox ADD COLUMN delivered INTEGER NOT NULL DEFAULT 0;
UPDATE mailbox SET delivered = acknowledged;
CREATE INDEX messages_by_target ON messages (kind, target, id);
CREATE INDEX messages_by_pair ON messages (kind, sender, target, id);
UPDATE version SET version = 2;
