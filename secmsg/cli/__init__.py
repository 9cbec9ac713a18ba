"""
The C{secmsg} command: its options, one module per subcommand, and the entry
point.

It sits on top: it may import the core and every wing, and nothing imports
it.
"""
