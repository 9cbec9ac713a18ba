"""
The CA tool behind C{secmsg pki} and C{secmsg init}: keys, certificates and
CRLs, the CA directory, and the development instance.

It imports the core and nothing of the daemon, the client or the command
line.
"""
