"""
The cluster: several daemons behind one name, sharing the message store in
PostgreSQL (L{secmsg.daemon.store.postgresql}) and telling each other over
a bus (Redis pub/sub) what moves: the messages each committed, who comes
and goes, who is kicked.  The bus is taken as unreliable: what a daemon
missed on it, it reads from the database.
"""
