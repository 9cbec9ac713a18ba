"""
Policy files: what they grant, and every way they are refused at load.
"""

from __future__ import annotations

import tomllib
from fnmatch import fnmatchcase
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import SynchronousTestCase

from secmsg import wire
from secmsg.daemon import policy
from secmsg.daemon.policy import (
    ROOMS_REMEMBERED,
    Policy,
    load_policy,
    parse_policy,
)
from secmsg.errors import PolicyError
from secmsg.pki.instance import DEVELOPMENT_POLICY
from secmsg.rate import DEFAULT_RATE, Rate
from tests.certs import CertificateAuthority
from tests.harness import POLICY, temporary_directory

CERTIFICATE = CertificateAuthority().issue("anyone").certificate
"""A certificate that no attribute rule in these tests matches."""


def parse(text: str) -> Policy:
    return parse_policy(tomllib.loads(text), "policy.toml")


class GrantTests(SynchronousTestCase):
    def test_inheritance_unions_commands(self) -> None:
        """
        A role grants its own commands and those of every role it inherits.
        """
        grant = parse(POLICY).grant_for("admin", CERTIFICATE)
        self.assertEqual(grant.roles, ("admin",))
        self.assertIn("KICK", grant.commands)
        self.assertIn("MSG", grant.commands)
        self.assertIn("PING", grant.commands)

    def test_unlisted_identity_gets_default_roles(self) -> None:
        """
        An identity not under [identities] gets default_roles.
        """
        grant = parse(POLICY).grant_for("zoe", CERTIFICATE)
        self.assertEqual(grant.roles, ("guest",))
        self.assertEqual(
            grant.commands,
            frozenset({"HELP", "WHOAMI", "WHO", "PING", "QUIT", "ACK", "CAPS"}),
        )

    def test_same_roles_granted_the_same_way_share_one_grant(self) -> None:
        """
        Identities given the same roles by the same part of the policy share
        one grant, so that a thousand sessions do not each hold copies of
        the same command sets; roles given otherwise get a grant of their
        own, which names how.
        """
        policy = parse(POLICY)
        zoe, yann = (policy.grant_for(name, CERTIFICATE) for name in ("zoe", "yann"))
        alice, bob = (policy.grant_for(name, CERTIFICATE) for name in ("alice", "bob"))
        self.assertIs(zoe, yann)
        self.assertIs(alice, bob)
        self.assertIsNot(zoe, alice)
        self.assertEqual(
            (zoe.granted_by, alice.granted_by), ("default_roles", "[identities]")
        )

    def test_empty_default_roles_refuse_unlisted(self) -> None:
        """
        default_roles = [] admits no one who is not listed.
        """
        policy = parse('default_roles = []\n[roles.r]\n[identities]\nann = ["r"]\n')
        self.assertIsNone(policy.grant_for("zoe", CERTIFICATE))
        # A role that grants nothing still leaves ACK, for one's own mail,
        # and CAPS, to learn what the server offers.
        self.assertEqual(
            policy.grant_for("ann", CERTIFICATE).commands, frozenset({"ACK", "CAPS"})
        )

    def test_presence_is_a_right_a_role_may_grant(self) -> None:
        """
        PRESENCE, which is no command, is granted like one: inherited, and
        held only by the roles that grant it.
        """
        granting = parse(
            '[roles.watcher]\ncommands = ["PRESENCE"]\n'
            '[roles.lead]\ninherits = ["watcher"]\n[roles.plain]\n'
            '[identities]\nann = ["lead"]\nbea = ["plain"]\n'
        )
        self.assertIn(policy.PRESENCE, granting.grant_for("ann", CERTIFICATE).commands)
        self.assertNotIn(
            policy.PRESENCE, granting.grant_for("bea", CERTIFICATE).commands
        )

    def test_the_development_policy_grants_presence_to_users(self) -> None:
        """
        The policy secmsg init writes lets its users be told who comes and
        goes, and still loads.
        """
        development = parse(
            DEVELOPMENT_POLICY.format(identities='admin = ["admin"]\nann = ["user"]')
        )
        self.assertIn(policy.PRESENCE, development.role_commands["user"])
        self.assertIn(policy.PRESENCE, development.role_commands["admin"])


class RefusalTests(SynchronousTestCase):
    def assertRefused(self, text: str, words: str) -> None:
        """
        Loading C{text} fails with an error naming the file and C{words}.
        """
        error = self.assertRaises(PolicyError, parse, text)
        self.assertIn(words, str(error))
        self.assertTrue(str(error).startswith("policy.toml: "))

    def test_unknown_command(self) -> None:
        """
        A command name secmsg does not know is refused, naming the role.
        """
        self.assertRefused(
            '[roles.r]\ncommands = ["PING", "FLY"]',
            "[roles.r] grants unknown command FLY",
        )

    def test_an_unknown_command_names_presence_among_the_known(self) -> None:
        """
        The refusal lists every right a role may grant, PRESENCE too.
        """
        self.assertRefused('[roles.r]\ncommands = ["FLY"]', "PING, PRESENCE, QUIT")

    def test_lower_case_command_is_unknown(self) -> None:
        """
        Command names are exact: 'ping' is not PING.
        """
        self.assertRefused('[roles.r]\ncommands = ["ping"]', "unknown command ping")

    def test_unknown_inherited_role(self) -> None:
        """
        Inheriting a role that is not declared is refused.
        """
        self.assertRefused('[roles.r]\ninherits = ["ghost"]', "unknown role ghost")

    def test_unknown_default_role(self) -> None:
        """
        A default role that is not declared is refused.
        """
        self.assertRefused(
            'default_roles = ["ghost"]', "default_roles names unknown role"
        )

    def test_unknown_identity_role(self) -> None:
        """
        An identity given an undeclared role is refused.
        """
        self.assertRefused(
            '[identities]\nann = ["ghost"]', "[identities] ann names unknown"
        )

    def test_inheritance_cycle(self) -> None:
        """
        A cycle through several roles is refused, showing the cycle.
        """
        self.assertRefused(
            '[roles.a]\ninherits = ["b"]\n[roles.b]\ninherits = ["c"]\n'
            '[roles.c]\ninherits = ["a"]',
            "inheritance cycle: a -> b -> c -> a",
        )

    def test_self_inheritance(self) -> None:
        """
        A role inheriting itself is a cycle too.
        """
        self.assertRefused('[roles.a]\ninherits = ["a"]', "inheritance cycle: a -> a")

    def test_misspelt_key(self) -> None:
        """
        A misspelt key is an error, not a silently empty role.
        """
        self.assertRefused('[roles.a]\ncommand = ["PING"]', "unknown key command")

    def test_wrong_shape(self) -> None:
        """
        Values of the wrong type are refused.
        """
        self.assertRefused('[roles.a]\ncommands = "PING"', "must be a list of strings")
        self.assertRefused("roles = 3", "[roles] must be a table")

    def test_identity_not_a_name_token(self) -> None:
        """
        An identity key that could never match a certificate is refused.
        """
        self.assertRefused('[roles.r]\n[identities]\n"a b" = ["r"]', "not a name token")

    def test_names_in_a_refusal_are_escaped(self) -> None:
        """
        A role name that holds a control or invisible character is shown
        escaped in the refusal, which goes to the log and to the RELOAD
        reply, so that it cannot drive the reader's terminal.
        """
        error = self.assertRaises(
            PolicyError, parse, '[roles."a\\u001b[2J\\u200b"]\ncommands = ["FLY"]'
        )
        self.assertIn("[roles.a\\x1b[2J\\u200b] grants unknown command", str(error))
        self.assertEqual(wire.escape_controls(str(error)), str(error))


class LoadTests(SynchronousTestCase):
    def test_missing_file(self) -> None:
        """
        A missing policy file is named with the reason.
        """
        path = temporary_directory(self) / "nope.toml"
        error = self.assertRaises(PolicyError, load_policy, path)
        self.assertEqual(str(error), f"{path}: cannot read: No such file or directory")

    def test_not_toml(self) -> None:
        """
        A file that is not TOML is refused with the parser's words.
        """
        path: Path = temporary_directory(self) / "policy.toml"
        path.write_text("[roles\n")
        error = self.assertRaises(PolicyError, load_policy, path)
        self.assertIn("not valid TOML", str(error))


RULES = """\
default_roles = ["guest"]

[roles.guest]
commands = ["PING"]

[roles.bot]
commands = ["MSG"]
rate = 100
burst = 500

[roles.admin]
inherits = ["guest"]
commands = ["KICK"]

[identities]
pinned = ["guest"]

[[rules]]
subject = { OU = "ops" }
roles = ["admin"]

[[rules]]
san_uri_prefix = "spiffe://example.org/service/"
roles = ["bot"]
"""


class AttributeRuleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.policy = parse(RULES)
        self.ca = CertificateAuthority()

    def issue(self, name: str, ou: str | None = None, uri: str | None = None):  # type: ignore[no-untyped-def]
        subject = (
            (x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),) if ou else ()
        )
        names = [x509.UniformResourceIdentifier(uri)] if uri else None
        return self.ca.issue(name, subject=subject, names=names).certificate

    def test_subject_field_grants_roles(self) -> None:
        """
        A certificate with OU=ops gets the role its rule grants, and the
        grant names the rule.
        """
        grant = self.policy.grant_for("carol", self.issue("carol", ou="ops"))
        self.assertEqual(grant.roles, ("admin",))
        self.assertIn("KICK", grant.commands)
        self.assertEqual(grant.granted_by, "rule 1 (OU=ops)")

    def test_every_matching_rule_adds_its_roles(self) -> None:
        """
        Rules combine: a certificate matching two gets both roles, and the
        most generous rate among them.
        """
        certificate = self.issue(
            "svc", ou="ops", uri="spiffe://example.org/service/billing"
        )
        grant = self.policy.grant_for("svc", certificate)
        self.assertEqual(grant.roles, ("admin", "bot"))
        self.assertEqual(grant.rate, Rate(100.0, 500))

    def test_uri_prefix_matches_whole_segments_only(self) -> None:
        """
        The prefix ends in /, so a look-alike service name is not matched
        and falls back to default_roles.
        """
        certificate = self.issue("evil", uri="spiffe://example.org/service-evil/x")
        grant = self.policy.grant_for("evil", certificate)
        self.assertEqual((grant.roles, grant.granted_by), (("guest",), "default_roles"))

    def test_listed_identity_is_not_widened_by_rules(self) -> None:
        """
        An identity under [identities] gets exactly its listed roles, even
        if its certificate matches a rule.
        """
        grant = self.policy.grant_for("pinned", self.issue("pinned", ou="ops"))
        self.assertEqual((grant.roles, grant.granted_by), (("guest",), "[identities]"))

    def test_rule_without_a_test_is_refused(self) -> None:
        """
        A rule that would match every certificate is a mistake, refused.
        """
        error = self.assertRaises(
            PolicyError, parse, '[roles.r]\n[[rules]]\nroles = ["r"]\n'
        )
        self.assertIn("[[rules]] entry 1 matches every certificate", str(error))

    def test_uri_prefix_must_end_with_slash(self) -> None:
        """
        A prefix that could match part of a path segment is refused.
        """
        error = self.assertRaises(
            PolicyError,
            parse,
            '[roles.r]\n[[rules]]\nsan_uri_prefix = "spiffe://x/svc"\nroles = ["r"]\n',
        )
        self.assertIn("must end with /", str(error))

    def test_unknown_subject_field_is_refused(self) -> None:
        """
        A subject field secmsg does not read is named in the refusal.
        """
        error = self.assertRaises(
            PolicyError,
            parse,
            '[roles.r]\n[[rules]]\nsubject = { title = "x" }\nroles = ["r"]\n',
        )
        self.assertIn("subject field 'title' is not one of", str(error))


class RateTests(SynchronousTestCase):
    def test_rate_is_inherited_and_defaults(self) -> None:
        """
        A role without a rate takes its parent's; one without either gets
        the default; burst defaults to three seconds' worth.
        """
        policy = parse('[roles.a]\nrate = 5\n[roles.b]\ninherits = ["a"]\n[roles.c]\n')
        self.assertEqual(policy.role_rates["a"], Rate(5.0, 15))
        self.assertEqual(policy.role_rates["b"], Rate(5.0, 15))
        self.assertEqual(policy.role_rates["c"], DEFAULT_RATE)

    def test_rate_past_the_ceiling_is_refused_naming_it(self) -> None:
        """
        A rate above the highest one allowed is refused in words that say
        so, not as one that is not above 0.
        """
        refusal = self.assertRaises(PolicyError, parse, "[roles.a]\nrate = 2e9\n")
        self.assertIn("above 0 and at most 1e9, not 2000000000.0", str(refusal))

    def test_bad_rates_are_refused(self) -> None:
        """
        A rate of zero, a fractional burst, or a burst alone is refused.
        """
        for text, words in [
            ("[roles.a]\nrate = 0\n", "rate must be a number"),
            ("[roles.a]\nrate = 1\nburst = 1.5\n", "burst must be a whole number"),
            ("[roles.a]\nburst = 3\n", "sets burst without rate"),
        ]:
            self.assertIn(words, str(self.assertRaises(PolicyError, parse, text)))


class RoomRuleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.rooms = parse(
            "[roles.user]\n[roles.admin]\n[roles.bot]\n"
            '[[rooms]]\npattern = "#ops-*"\njoin = ["admin", "bot"]\n'
            'say = ["admin"]\n'
            '[[rooms]]\npattern = "#*"\njoin = ["user", "admin"]\n'
        ).rooms

    def test_first_matching_pattern_decides(self) -> None:
        """
        #ops-db matches the first entry: a user may not join it although
        the catch-all that follows would let them.
        """
        refusal = self.rooms.refusal("join", "#ops-db", ("user",))
        self.assertEqual(
            refusal, 'rooms matching "#ops-*" let only roles admin, bot join'
        )
        self.assertIsNone(self.rooms.refusal("join", "#lobby", ("user",)))

    def test_deciding_rule_is_matched_once_per_room(self) -> None:
        """
        A room asked about again is not matched against the patterns again:
        a room's messages are checked for every member.
        """
        matched: list[tuple[str, str]] = []

        def counting(room: str, pattern: str) -> bool:
            matched.append((room, pattern))
            return fnmatchcase(room, pattern)

        self.patch(policy, "fnmatchcase", counting)
        for _ in range(3):
            self.assertIsNone(self.rooms.refusal("read", "#lobby", ("user",)))
            self.assertIsNotNone(self.rooms.refusal("read", "#ops-db", ("user",)))
        self.assertEqual(
            matched, [("#lobby", "#ops-*"), ("#lobby", "#*"), ("#ops-db", "#ops-*")]
        )

    def test_rules_remember_a_bounded_number_of_rooms(self) -> None:
        """
        Room names come from clients: past the bound, the oldest rooms are
        forgotten and decided afresh when asked about again.
        """
        for number in range(ROOMS_REMEMBERED + 10):
            self.rooms.refusal("join", f"#room{number}", ("user",))
        self.assertEqual(self.rooms._deciding.cache_info().currsize, ROOMS_REMEMBERED)
        refusal = self.rooms.refusal("join", "#ops-db", ("user",))
        self.assertEqual(
            refusal, 'rooms matching "#ops-*" let only roles admin, bot join'
        )

    def test_read_defaults_to_join_and_say_is_separate(self) -> None:
        """
        A bot may join and read #ops-db but not speak in it.
        """
        self.assertIsNone(self.rooms.refusal("read", "#ops-db", ("bot",)))
        self.assertIsNotNone(self.rooms.refusal("say", "#ops-db", ("bot",)))

    def test_room_rule_errors(self) -> None:
        """
        A pattern that is no room name, a rule without join, a repeated
        pattern and an unknown role are each refused.
        """
        for text, words in [
            ('[[rooms]]\npattern = "ops"\njoin = []\n', "pattern must be"),
            ('[[rooms]]\npattern = "#a"\n', "must say which roles may join"),
            (
                '[[rooms]]\npattern = "#a"\njoin = []\n[[rooms]]\npattern = "#a"\n'
                "join = []\n",
                "repeats the pattern #a",
            ),
            ('[[rooms]]\npattern = "#a"\njoin = ["nobody"]\n', "unknown role nobody"),
        ]:
            self.assertIn(words, str(self.assertRaises(PolicyError, parse, text)))
