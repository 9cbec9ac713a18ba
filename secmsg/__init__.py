"""
secmsg: a mutual-TLS messaging daemon on Twisted.

Run it with C{twistd -n secmsg --config FILE}; make a development instance
with C{secmsg init DIR}.
"""

__version__ = "0.1.0"
