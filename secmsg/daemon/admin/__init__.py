"""
The HTTPS admin and metrics interface, on the same identities as the line
protocol.

Every request is authenticated by its TLS client certificate and logged
in through the same twisted.cred portal; the realm answers with an
L{secmsg.daemon.admin.api.AdminResource} wrapped around the same kind of
avatar a line session gets, so that an endpoint is allowed exactly when
the policy grants its command (C{GET /v1/sessions} needs WHO,
C{POST /v1/kick} needs KICK, and so on), and it draws on the identity's
rate as its line sessions do.  Without a certificate the answer is 401;
with one the policy does not allow, 403 naming the rule.  Bodies and
answers are JSON, errors have one shape:
C{{"status": 403, "error": "forbidden", "detail": "..."}}.

Three modules, imported one way: L{http} is the plumbing (connections,
bounded requests, the one error shape), L{guard} logs each request in
by its certificate, and L{api} is what an admitted identity may ask and
what it gets.  docs/admin-api.md and docs/openapi.json describe it.
"""
