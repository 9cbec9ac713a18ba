"""
The HTTPS admin interface over real TLS in memory: who gets 401 and 403,
what each endpoint does to the line sessions, the metrics, and the OpenAPI
document checked against the answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from secmsg.client.tls import client_tls_options
from secmsg.daemon.admin.api import AdminApi
from secmsg.daemon.admin.http import CONNECTION_DEADLINE, AdminGate
from secmsg.daemon.audit import RecordBudget
from secmsg.daemon.limits import Limits
from secmsg.messages import WaitingLimit
from tests.certs import CertificateAuthority, Pair
from tests.harness import POLICY, Instance
from tests.test_audit import record_events, records

OPENAPI = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class HttpClient(Protocol):
    """
    Sends one HTTP/1.1 request and keeps what comes back until the server
    closes.
    """

    def __init__(self, request: bytes) -> None:
        self._request = request
        self.received = b""
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:
        self.lost = reason

    def response(self) -> Response:
        head, _, body = self.received.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return Response(int(status_line.split()[1]), headers, body)


class AdminClient:
    """
    Requests to an in-memory daemon's admin interface, as a given
    certificate (or none).
    """

    def __init__(self, instance: Instance) -> None:
        self.instance = instance

    def connect(
        self,
        pair: Pair | None,
        method: str,
        path: str,
        body: bytes | None,
        kind: str | None,
        headers: tuple[str, ...] = (),
    ) -> HttpClient:
        """
        Send one request; C{kind} L{None} sends no Content-Type, and
        C{headers} are more header lines to send.
        """
        lines = [f"{method} {path} HTTP/1.1", "Host: localhost", "Connection: close"]
        if body is not None:
            if kind is not None:
                lines.append(f"Content-Type: {kind}")
            lines.append(f"Content-Length: {len(body)}")
        lines += headers
        request = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
        if pair is None:
            options = optionsForClientTLS(
                "localhost", trustRoot=Certificate.loadPEM(self.instance.ca.pem)
            )
        else:
            options = client_tls_options(
                "localhost", self.instance.ca.pem, pair.certificate_pem, pair.key_pem
            )
        client = HttpClient(request)
        self.instance.connect_protocol(client, options, self.instance.daemon.admin)
        self.instance.flush()
        return client

    def request(
        self,
        pair: Pair | None,
        method: str,
        path: str,
        body: Any = None,
        kind: str | None = "application/json",
        headers: tuple[str, ...] = (),
    ) -> Response:
        raw = body if isinstance(body, bytes) or body is None else json.dumps(body)
        if isinstance(raw, str):
            raw = raw.encode()
        return self.connect(pair, method, path, raw, kind, headers).response()


class AdminTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.instance = Instance(self)
        self.web = AdminClient(self.instance)
        ca = self.instance.ca
        self.admin, self.alice, self.zoe = (
            ca.issue("admin"),
            ca.issue("alice"),
            ca.issue("zoe"),
        )

    def test_no_certificate_is_401_in_words(self) -> None:
        """
        A request without a client certificate gets 401 with a JSON body
        that says a certificate is needed and how to give one.
        """
        response = self.web.request(None, "GET", "/v1/sessions")
        self.assertEqual(response.status, 401)
        self.assertEqual(response.json()["error"], "unauthorized")
        self.assertIn("a client certificate is required", response.json()["detail"])
        self.assertIn("www-authenticate", response.headers)

    def test_refused_certificate_never_gets_past_the_handshake(self) -> None:
        """
        A revoked certificate gets no HTTP answer at all.
        """
        self.instance.ca.revoke(self.alice)
        self.instance.write("crl.pem", self.instance.ca.crl_pem())
        self.instance.daemon.reloader.reload()
        client = self.web.connect(self.alice, "GET", "/healthz", None, "")
        self.assertEqual(client.received, b"")
        self.assertIsNotNone(client.lost)

    def test_outside_ones_roles_is_403_naming_the_rule(self) -> None:
        """
        zoe, a guest by default, may not kick: 403 with the rule, recorded
        in the audit trail; but she may ask whether the daemon lives.
        """
        trail = record_events(self)
        response = self.web.request(self.zoe, "POST", "/v1/kick", {"identity": "bob"})
        self.assertEqual(response.status, 403)
        self.assertEqual(
            response.json()["detail"],
            "KICK not permitted for zoe: not granted by role guest",
        )
        (denied,) = [r for r in records(trail) if r["event"] == "denied"]
        self.assertEqual((denied["identity"], denied["verb"]), ("zoe", "KICK"))
        health = self.web.request(self.zoe, "GET", "/healthz")
        self.assertEqual(health.json(), {"status": "ok", "identity": "zoe", "node": ""})

    def test_admin_lists_and_kicks_a_line_session(self) -> None:
        """
        The admin sees alice's line session and kicks it: her client is
        told KICKED, and the kick is recorded.
        """
        trail = record_events(self)
        line = self.instance.connect(self.alice)
        line.take()
        sessions = self.web.request(self.admin, "GET", "/v1/sessions").json()
        self.assertEqual(
            [(s["identity"], s["roles"]) for s in sessions["sessions"]],
            [("alice", ["user"])],
        )
        response = self.web.request(
            self.admin, "POST", "/v1/kick", {"identity": "alice", "reason": "lunch"}
        )
        self.assertEqual(response.json(), {"kicked": "alice", "sessions": 1})
        self.assertEqual(line.take(), ["KICKED admin lunch"])
        (kick,) = [r for r in records(trail) if r["event"] == "kick"]
        self.assertEqual((kick["by"], kick["target"]), ("admin", "alice"))
        again = self.web.request(self.admin, "POST", "/v1/kick", {"identity": "alice"})
        self.assertEqual(again.status, 404)

    def test_reload_and_its_dry_run(self) -> None:
        """
        POST /v1/reload reloads, or with dry says what it would change; a
        bad policy is a 500 with the reason and changes nothing.
        """
        self.instance.connect(self.alice)
        dry = self.web.request(self.admin, "POST", "/v1/reload", {"dry": True})
        self.assertEqual((dry.status, dry.json()["dry"]), (200, True))
        # An empty body, as JSON, is a reload as well.
        done = self.web.request(self.admin, "POST", "/v1/reload", b"")
        self.assertEqual(done.json()["checked"], 1)
        self.instance.write("policy.toml", b'[roles.a]\ninherits = ["a"]\n')
        broken = self.web.request(self.admin, "POST", "/v1/reload", {})
        self.assertEqual(broken.status, 500)
        self.assertIn("inheritance cycle: a -> a", broken.json()["detail"])

    def test_messages_and_broadcasts_reach_line_sessions(self) -> None:
        """
        A message posted by the admin reaches alice's line session as from
        the admin; one to an unknown identity is 404.
        """
        line = self.instance.connect(self.alice)
        line.take()
        sent = self.web.request(
            self.admin, "POST", "/v1/messages", {"to": "alice", "text": "hi"}
        )
        self.assertEqual(sent.json(), {"id": 1})
        (push,) = line.take()
        self.assertRegex(push, r"^MSG 1 \S+ admin hi$")
        self.web.request(self.admin, "POST", "/v1/broadcast", {"text": "all hands"})
        self.assertRegex(line.take()[0], r"^BROADCAST 2 \S+ admin all hands$")
        unknown = self.web.request(
            self.admin, "POST", "/v1/messages", {"to": "nobody", "text": "hi"}
        )
        self.assertEqual(unknown.status, 404)

    def test_a_message_past_the_waiting_limit_is_507(self) -> None:
        """
        A message to an identity with as much waiting in its inbox as it
        may have gets 507 Insufficient Storage in the one error shape, and
        is stored for nobody; a broadcast, kept once for all, is taken.
        """
        instance = Instance(self, waiting_limit=WaitingLimit(messages=1))
        web = AdminClient(instance)
        admin = instance.ca.issue("admin")
        sent = web.request(admin, "POST", "/v1/messages", {"to": "bob", "text": "1"})
        self.assertEqual(sent.status, 200)
        refused = web.request(admin, "POST", "/v1/messages", {"to": "bob", "text": "2"})
        self.assertEqual(
            refused.json(),
            {
                "status": 507,
                "error": "insufficient storage",
                "detail": "not sent: bob has 1 unacknowledged message "
                "waiting (limit 1)",
            },
        )
        self.assertEqual(instance.store.waiting("bob"), (1, 1))
        taken = web.request(admin, "POST", "/v1/broadcast", {"text": "all"})
        self.assertEqual(taken.status, 200)

    def test_a_post_without_the_json_type_is_415_and_does_nothing(self) -> None:
        """
        A POST must say its body is JSON, an empty one too: a page of
        another site can send a form or a bodiless POST without asking
        first, but not one of type application/json.
        """
        trail = record_events(self)
        for kind in (None, "", "text/plain", "application/x-www-form-urlencoded"):
            refused = self.web.request(self.admin, "POST", "/v1/reload", b"", kind)
            self.assertEqual(refused.status, 415, kind)
            self.assertEqual(
                refused.json()["detail"],
                "send the body, even an empty one, as application/json",
            )
        self.assertEqual([r for r in records(trail) if r["event"] == "reload"], [])

    def test_a_request_from_another_origin_is_403_and_does_nothing(self) -> None:
        """
        A request whose Origin is not the interface's own, or that the
        browser marks as sent from another site, is refused with 403 before
        it is authorized or carried out, and recorded as a denial.
        """
        trail = record_events(self)
        for header, said in [
            ("Origin: https://evil.example", "Origin https://evil.example"),
            ("Origin: null", "Origin null"),
            ("Origin: http://localhost", "Origin http://localhost"),
            ("Origin: https://localhost.evil.example", "Origin https://localhost."),
            ("Sec-Fetch-Site: cross-site", "Sec-Fetch-Site cross-site"),
            ("Sec-Fetch-Site: same-site", "Sec-Fetch-Site same-site"),
        ]:
            refused = self.web.request(
                self.admin, "POST", "/v1/reload", {}, headers=(header,)
            )
            self.assertEqual(refused.status, 403, header)
            self.assertEqual(refused.json()["error"], "forbidden")
            self.assertIn("refused as cross-site", refused.json()["detail"])
            self.assertIn(said, refused.json()["detail"])
        zoe = self.web.request(
            self.zoe, "POST", "/v1/kick", {}, headers=("Origin: https://evil.example",)
        )
        self.assertIn("refused as cross-site", zoe.json()["detail"])
        scrape = self.web.request(
            self.admin, "GET", "/metrics", headers=("Origin: https://evil.example",)
        )
        self.assertEqual(scrape.status, 403)
        events = records(trail)
        self.assertEqual([r for r in events if r["event"] == "reload"], [])
        denied = [r for r in events if r["event"] == "denied"]
        self.assertEqual(len(denied), 8)
        self.assertEqual(
            (denied[0]["identity"], denied[0]["verb"]), ("admin", "RELOAD")
        )
        self.assertIn("Origin https://evil.example", denied[0]["rule"])

    def test_a_referer_from_elsewhere_is_403(self) -> None:
        """
        A Referer naming a page of another origin is refused as an Origin
        would be.
        """
        trail = record_events(self)
        refused = self.web.request(
            self.admin,
            "POST",
            "/v1/reload",
            {},
            headers=("Referer: https://evil.example/page?x=1",),
        )
        self.assertEqual(refused.status, 403)
        self.assertIn("Referer https://evil.example/page?x=1", refused.json()["detail"])
        self.assertEqual([r for r in records(trail) if r["event"] == "reload"], [])

    def test_a_request_from_the_interfaces_own_origin_is_carried_out(self) -> None:
        """
        A page of the admin interface's own origin (https and the Host the
        request names), or a browser that says so, is let through.
        """
        trail = record_events(self)
        for headers in [
            ("Origin: https://localhost",),
            ("Origin: https://LOCALHOST:443",),
            ("Referer: https://localhost/v1/sessions", "Sec-Fetch-Site: same-origin"),
            ("Sec-Fetch-Site: none",),
        ]:
            done = self.web.request(
                self.admin, "POST", "/v1/reload", b"", headers=headers
            )
            self.assertEqual(done.status, 200, headers)
        reloads = [r for r in records(trail) if r["event"] == "reload"]
        self.assertEqual(len(reloads), 4)

    def test_invisible_characters_in_posted_text_are_400(self) -> None:
        """
        A message, a broadcast or a kick's reason posted with a hidden
        character is refused with 400 naming it, and alice's line session
        receives nothing: the admin API relays text by the line's rules.
        """
        line = self.instance.connect(self.alice)
        line.take()
        hidden = ", an invisible character"
        for path, body, detail in (
            (
                "/v1/messages",
                {"to": "alice", "text": "hi\u200b"},
                "text: text holds U+200B ZERO WIDTH SPACE" + hidden,
            ),
            (
                "/v1/broadcast",
                {"text": "\U000e0041hidden"},
                "text: text holds U+E0041 TAG LATIN CAPITAL LETTER A" + hidden,
            ),
            (
                "/v1/kick",
                {"identity": "alice", "reason": "\u3164"},
                "reason: text holds U+3164 HANGUL FILLER" + hidden,
            ),
        ):
            response = self.web.request(self.admin, "POST", path, body)
            self.assertEqual(
                (response.status, response.json().get("detail")), (400, detail)
            )
        self.assertEqual(line.take(), [])
        self.assertIsNone(line.lost)

    def test_bad_requests_are_refused_in_words(self) -> None:
        """
        Unknown path 404, wrong method 405 with Allow, wrong content type
        415, too big a body 413, not JSON or a bad field 400, a control
        character in text 400.
        """
        cases = [
            (("GET", "/v2/nothing"), 404),
            (("POST", "/v1/sessions", {}), 405),
            (("POST", "/v1/kick", b"identity=bob", "text/plain"), 415),
            (("POST", "/v1/broadcast", {"text": "x" * 70000}), 413),
            (("POST", "/v1/kick", b"{not json"), 400),
            (("POST", "/v1/kick", {"identity": "no spaces"}), 400),
            (("POST", "/v1/broadcast", {"text": "\x1b[2Jgotcha"}), 400),
            (("POST", "/v1/messages", b"[" * 50000), 400),
        ]
        for arguments, status in cases:
            response = self.web.request(self.admin, *arguments)
            self.assertEqual(response.status, status, arguments)
            self.assertEqual(response.json()["status"], status)
        wrong = self.web.request(self.admin, "DELETE", "/v1/sessions")
        self.assertEqual(wrong.headers["allow"], "GET")

    def test_a_reason_that_is_no_string_is_400_asking_for_a_string(self) -> None:
        """
        Guards the words of a refused kick reason: it may be empty, so the
        refusal of one that is no string must not ask for a non-empty one.
        """
        response = self.web.request(
            self.admin, "POST", "/v1/kick", {"identity": "alice", "reason": None}
        )
        self.assertEqual(
            (response.status, response.json()["detail"]),
            (400, "reason must be a string"),
        )

    def test_metrics_parse_and_move_with_traffic(self) -> None:
        """
        /metrics is Prometheus text that prometheus-client parses; sessions,
        handshakes, commands and messages move when traffic flows; a user
        may not read it.
        """

        def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            response = self.web.request(self.admin, "GET", "/metrics")
            self.assertEqual(response.status, 200)
            return {
                (sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(response.body.decode())
                for sample in family.samples
            }

        before = samples()
        self.assertEqual(before[("secmsg_sessions_open", ())], 0)
        alice = self.instance.connect(self.alice)
        self.instance.connect(self.instance.ca.issue("bob"))
        alice.send("MSG bob hello")
        self.instance.flush()
        after = samples()
        self.assertEqual(after[("secmsg_sessions_open", ())], 2)
        self.assertEqual(
            after[("secmsg_handshakes_total", (("outcome", "accepted"),))], 2
        )
        self.assertEqual(
            after[("secmsg_commands_total", (("code", "250"), ("command", "MSG")))], 1
        )
        self.assertEqual(after[("secmsg_messages_accepted_total", ())], 1)
        self.assertEqual(
            after[("secmsg_deliveries_total", (("outcome", "delivered"),))], 1
        )
        self.assertEqual(self.web.request(self.alice, "GET", "/metrics").status, 403)
        self.assertEqual(
            samples()[
                (
                    "secmsg_admin_requests_total",
                    (("code", "403"), ("command", "METRICS")),
                )
            ],
            1,
        )

    def test_one_request_a_connection(self) -> None:
        """
        The connection closes after its answer, so that every request is
        judged by a handshake of its own against the trust in force.
        """
        client = self.web.connect(self.admin, "GET", "/healthz", None, "")
        self.assertEqual(client.response().headers["connection"], "close")
        self.assertIsNotNone(client.lost)

    def test_session_details_are_for_those_who_may_kick(self) -> None:
        """
        alice, who has WHO but not KICK, sees who is online and the rooms
        she may read; the admin also sees where each session comes from.
        """
        line = self.instance.connect(self.alice)
        line.send("JOIN #lobby")
        self.instance.flush()
        self.assertEqual(
            self.web.request(self.alice, "GET", "/v1/sessions").json(),
            {
                "node": "",
                "sessions": [{"identity": "alice", "rooms": ["#lobby"]}],
                "elsewhere": [],
            },
        )
        (detailed,) = self.web.request(self.admin, "GET", "/v1/sessions").json()[
            "sessions"
        ]
        self.assertEqual(detailed["roles"], ["user"])
        self.assertRegex(detailed["address"], r"^127\.0\.0\.1:\d+$")

    def test_refused_handshake_is_recorded_and_counted(self) -> None:
        """
        A certificate from another CA is refused at the handshake, recorded
        in the audit trail and counted, as on the line port.
        """
        trail = record_events(self)
        stranger = CertificateAuthority("another CA").issue("admin")
        self.web.connect(stranger, "GET", "/healthz", None, "")
        (refused,) = [r for r in records(trail) if r["event"] == "handshake_refused"]
        self.assertTrue(refused["reason"].startswith("unknown CA"))
        exposition = self.instance.daemon.metrics.exposition().decode()
        self.assertIn('secmsg_handshakes_total{outcome="unknown_ca"} 1.0', exposition)


class AdminLimitTests(SynchronousTestCase):
    def test_requests_draw_on_the_identitys_rate(self) -> None:
        """
        Past its burst an identity gets 429 with Retry-After, the same
        bucket its line sessions draw on.
        """
        instance = Instance(self, POLICY.replace("rate = 1000000", "rate = 1"))
        web = AdminClient(instance)
        alice = instance.ca.issue("alice")
        statuses = [web.request(alice, "GET", "/healthz").status for _ in range(4)]
        self.assertEqual(statuses, [200, 200, 200, 429])
        refused = web.request(alice, "GET", "/healthz")
        self.assertEqual(refused.headers["retry-after"], "1")
        self.assertEqual(refused.json()["detail"], "slow down; retry in 1000 ms")

    def test_connections_past_the_per_address_cap_make_room(self) -> None:
        """
        Past the per-address budget, the admin port cuts the oldest
        connection of that address to make room for the newest; and it
        cuts any after its deadline.
        """
        clock = Clock()
        gate = AdminGate(
            Factory.forProtocol(Protocol),
            clock,
            Limits(max_handshakes_per_address=2),
            RecordBudget(clock, "handshake_refused"),
        )
        peer = IPv4Address("TCP", "127.0.0.1", 50000)
        transports = [StringTransport() for _ in range(3)]
        for transport in transports:
            gate.buildProtocol(peer).makeConnection(transport)
        self.assertEqual([t.disconnected for t in transports], [True, False, False])
        clock.advance(CONNECTION_DEADLINE)
        self.assertTrue(transports[1].disconnected)


class OpenApiTests(SynchronousTestCase):
    def test_the_document_matches_the_server(self) -> None:
        """
        docs/openapi.json is valid OpenAPI, names every path the server
        serves, and each answer the server gives (to a request of each
        kind, right and wrong) is documented, with a body of its schema.
        """
        document = json.loads(OPENAPI.read_text())
        validate_spec(document)
        instance = Instance(self)
        web = AdminClient(instance)
        served = AdminApi(None, None, None, None, None, None, 0, None, "").routes
        self.assertEqual(set(document["paths"]), {path.decode() for path in served})
        for path, methods in served.items():
            self.assertEqual(
                set(document["paths"][path.decode()]),
                {method.decode().lower() for method in methods},
            )
        admin, zoe = instance.ca.issue("admin"), instance.ca.issue("zoe")
        instance.connect(instance.ca.issue("alice"))
        asked = [
            (admin, "GET", "/v1/sessions", None),
            (zoe, "GET", "/v1/sessions", None),
            (None, "GET", "/v1/sessions", None),
            (admin, "POST", "/v1/kick", {"identity": "alice"}),
            (admin, "POST", "/v1/kick", {"identity": "alice"}),
            (admin, "POST", "/v1/kick", {}),
            (admin, "POST", "/v1/reload", {"dry": True}),
            (admin, "POST", "/v1/broadcast", {"text": "hello"}),
            (admin, "POST", "/v1/messages", {"to": "nobody", "text": "hi"}),
            (admin, "POST", "/v1/messages", {"to": "alice", "text": "hi"}),
            (admin, "POST", "/v1/backup", {"path": "relative.db"}),
            (admin, "POST", "/v1/backup", {"path": "/nowhere/secmsg.db"}),
            (zoe, "POST", "/v1/backup", {"path": "/nowhere/secmsg.db"}),
            (admin, "GET", "/metrics", None),
            (zoe, "GET", "/healthz", None),
            (admin, "PUT", "/healthz", None),
        ]
        for pair, method, path, body in asked:
            response = web.request(pair, method, path, body)
            operations = document["paths"][path]
            operation = operations.get(method.lower()) or next(
                iter(operations.values())
            )
            documented = operation["responses"]
            self.assertIn(str(response.status), documented, (method, path))
            answer = documented[str(response.status)]
            if "$ref" in answer:
                answer = document["components"]["responses"][
                    answer["$ref"].rsplit("/", 1)[1]
                ]
            for header, described in answer.get("headers", {}).items():
                if described.get("required"):
                    self.assertIn(header.lower(), response.headers, (method, path))
            content = answer["content"]
            if "application/json" in content:
                schema = {
                    **content["application/json"]["schema"],
                    "components": document["components"],
                }
                Draft202012Validator(schema).validate(response.json())
            else:
                self.assertTrue(
                    response.headers["content-type"].startswith("text/plain")
                )
