"""
The message store: SQLite and PostgreSQL providers for the daemon (one
body of SQL, L{secmsg.daemon.store.sql}) and a memory provider for tests,
all of L{secmsg.daemon.interfaces.IMessageStore}.
"""
