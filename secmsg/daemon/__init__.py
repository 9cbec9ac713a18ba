"""
The daemon, C{twistd secmsg}: TLS and the certificate check, twisted.cred,
policy, the session protocol, the hub, the message store, the admin
interface, reloads and the audit trail.

It imports the core (the modules directly in L{secmsg}) and nothing of the
client, the CA tool or the command line; L{secmsg.tap} assembles it.
"""
