"""
Policy files: what they grant, and every way they are refused at load.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from secmsg.errors import PolicyError
from secmsg.policy import Policy, load_policy, parse_policy
from tests.harness import POLICY, temporary_directory


def parse(text: str) -> Policy:
    return parse_policy(tomllib.loads(text), "policy.toml")


class GrantTests(SynchronousTestCase):
    def test_inheritance_unions_commands(self) -> None:
        """
        A role grants its own commands and those of every role it inherits.
        """
        grant = parse(POLICY).grant_for("admin")
        self.assertEqual(grant.roles, ("admin",))
        self.assertIn("KICK", grant.commands)
        self.assertIn("MSG", grant.commands)
        self.assertIn("PING", grant.commands)

    def test_unlisted_identity_gets_default_roles(self) -> None:
        """
        An identity not under [identities] gets default_roles.
        """
        grant = parse(POLICY).grant_for("zoe")
        self.assertEqual(grant.roles, ("guest",))
        self.assertEqual(
            grant.commands,
            frozenset({"HELP", "WHOAMI", "WHO", "PING", "QUIT", "ACK"}),
        )

    def test_empty_default_roles_refuse_unlisted(self) -> None:
        """
        default_roles = [] admits no one who is not listed.
        """
        policy = parse('default_roles = []\n[roles.r]\n[identities]\nann = ["r"]\n')
        self.assertIsNone(policy.grant_for("zoe"))
        # A role that grants nothing still leaves ACK, for one's own mail.
        self.assertEqual(policy.grant_for("ann").commands, frozenset({"ACK"}))


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
