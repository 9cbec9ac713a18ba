"""
The client, C{secmsg connect} and C{secmsg send}: its side of the protocol,
its TLS options, the terminal prompt and the scripted mode.

It imports the core and nothing of the daemon, the CA tool or the command
line.
"""
