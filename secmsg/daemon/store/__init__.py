"""
The message store: a SQLite provider for the daemon and a memory provider
for tests, both of L{secmsg.daemon.interfaces.IMessageStore}.
"""
