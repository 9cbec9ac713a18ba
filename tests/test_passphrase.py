"""
A passphrase on C{ca.key}: C{init --passphrase-fd} (or C{--passphrase},
asked twice on the terminal) encrypts it, every command that signs needs
it, a wrong one changes nothing, and it is never printed.
"""

from __future__ import annotations

import io
import os
import secrets
import sys

from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import SynchronousTestCase

from secmsg.cli import passphrase as passphrase_module
from tests.harness import temporary_directory
from tests.test_authority import run_cli
from tests.test_signing_requests import snapshot

SECRET = f"test {secrets.token_urlsafe(12)}"
"""A passphrase with a space in it, made afresh for each run."""


class _Terminal(io.StringIO):
    """
    A standard input that says it is a terminal.
    """

    def isatty(self) -> bool:
        return True


class PassphraseTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = temporary_directory(self) / "ca"
        self.user = temporary_directory(self)
        # No terminal, wherever the tests run, unless a test gives one.
        self.patch(sys, "stdin", io.StringIO())

    def secmsg(self, *argv: str) -> tuple[int, str, str]:
        status, out, err = run_cli(self, *argv)
        self.assertNotIn(SECRET, out + err)
        return status, out, err

    def descriptor(self, text: str) -> str:
        """
        A file descriptor from which the passphrase C{text} can be read, as
        a script would pass it.
        """
        read, write = os.pipe()
        os.write(write, f"{text}\n".encode())
        os.close(write)
        self.addCleanup(os.close, read)
        return str(read)

    def init(self) -> None:
        d = str(self.directory)
        status, _, err = self.secmsg(
            "pki", "init", d, "--passphrase-fd", self.descriptor(SECRET)
        )
        self.assertEqual(status, 0, err)

    def test_init_encrypts_the_key(self) -> None:
        """
        The key is encrypted PKCS#8, 0600, and opens with the passphrase
        only.
        """
        self.init()
        key = (self.directory / "ca.key").read_bytes()
        self.assertTrue(key.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----"))
        self.assertEqual(os.stat(self.directory / "ca.key").st_mode & 0o777, 0o600)
        with self.assertRaises(TypeError):
            serialization.load_pem_private_key(key, None)
        serialization.load_pem_private_key(key, SECRET.encode())

    def test_every_signing_command_needs_the_passphrase(self) -> None:
        """
        issue, sign, renew, revoke and crl each work with the passphrase
        from a descriptor; without one and no terminal, each is refused in
        one line and nothing changes.  list needs none.
        """
        self.init()
        d = str(self.directory)
        self.secmsg("pki", "request", "carol", "--dir", str(self.user))
        csr = str(self.user / "carol.csr")
        commands = [
            ["issue", "alice"],
            ["sign", csr],
            ["renew", "alice"],
            ["revoke", "carol"],
            ["crl"],
        ]
        for command in commands:
            before = snapshot(self.directory)
            status, out, err = self.secmsg("pki", "--dir", d, *command)
            self.assertEqual((status, out), (1, ""), command)
            self.assertEqual(len(err.splitlines()), 1, err)
            self.assertIn("--passphrase-fd N", err)
            self.assertEqual(snapshot(self.directory), before, command)
            fd = self.descriptor(SECRET)
            status, _, err = self.secmsg(
                "pki", "--dir", d, *command, "--passphrase-fd", fd
            )
            self.assertEqual(status, 0, (command, err))
        status, out, _ = self.secmsg("pki", "--dir", d, "list")
        self.assertEqual(status, 0)
        self.assertIn("carol", out)

    def test_wrong_passphrase_is_refused_and_changes_nothing(self) -> None:
        """
        A wrong passphrase is refused in one line saying so, for a command
        that would have written a key, a certificate and the inventory.
        """
        self.init()
        before = snapshot(self.directory)
        for command in (["issue", "alice"], ["crl"]):
            status, out, err = self.secmsg(
                "pki", "--dir", str(self.directory), *command,
                "--passphrase-fd", self.descriptor("not it"),
            )  # fmt: skip
            self.assertEqual((status, out), (1, ""))
            self.assertEqual(len(err.splitlines()), 1)
            self.assertIn("wrong passphrase", err)
        self.assertEqual(snapshot(self.directory), before)
        self.assertFalse((self.directory / "clients").exists())

    def test_terminal_asks_twice_and_refuses_a_mismatch(self) -> None:
        """
        init --passphrase asks twice with getpass; two different answers
        make nothing, two equal ones make an encrypted key that a command
        then asks for once.
        """
        answers: list[str] = []
        prompts: list[str] = []

        def getpass(prompt: str) -> str:
            prompts.append(prompt)
            return answers.pop(0)

        self.patch(passphrase_module.getpass, "getpass", getpass)
        self.patch(sys, "stdin", _Terminal())
        answers[:] = [SECRET, SECRET + "!"]
        status, _, err = self.secmsg("pki", "init", str(self.directory), "--passphrase")
        self.assertEqual(status, 1)
        self.assertIn("the two passphrases differ", err)
        self.assertFalse((self.directory / "ca.key").exists())
        answers[:] = [SECRET, SECRET]
        status, _, err = self.secmsg("pki", "init", str(self.directory), "--passphrase")
        self.assertEqual(status, 0, err)
        answers[:] = [SECRET]
        prompts.clear()
        status, _, err = self.secmsg("pki", "--dir", str(self.directory), "crl")
        self.assertEqual(status, 0, err)
        self.assertEqual(prompts, [f"passphrase for {self.directory / 'ca.key'}: "])

    def test_empty_passphrase_is_refused(self) -> None:
        """
        An empty passphrase would encrypt nothing worth the name: refused.
        """
        status, _, err = self.secmsg(
            "pki", "init", str(self.directory), "--passphrase-fd", self.descriptor("")
        )
        self.assertEqual(status, 1)
        self.assertIn("the passphrase is empty", err)
        self.assertFalse((self.directory / "ca.key").exists())

    def test_issuing_ca_under_an_encrypted_root(self) -> None:
        """
        init --intermediate opens an encrypted root with
        --root-passphrase-fd; a wrong one leaves no issuing CA and the root
        as it was, and the right one makes it, itself encrypted with its
        own passphrase.
        """
        root, issuing = self.directory / "root", self.directory / "issuing"
        fd = self.descriptor(SECRET)
        self.assertEqual(
            self.secmsg("pki", "init", str(root), "--root", "--passphrase-fd", fd)[0], 0
        )
        before = snapshot(root)
        status, _, err = self.secmsg(
            "pki", "init", str(issuing), "--intermediate", "--root-dir", str(root),
            "--root-passphrase-fd", self.descriptor("not it"),
        )  # fmt: skip
        self.assertEqual(status, 1)
        self.assertIn(f"wrong passphrase for {root / 'ca.key'}", err)
        self.assertFalse(issuing.exists())
        self.assertEqual(snapshot(root), before)
        status, _, err = self.secmsg(
            "pki", "init", str(issuing), "--intermediate", "--root-dir", str(root),
            "--root-passphrase-fd", self.descriptor(SECRET),
            "--passphrase-fd", self.descriptor(SECRET + " too"),
        )  # fmt: skip
        self.assertEqual(status, 0, err)
        key = (issuing / "ca.key").read_bytes()
        serialization.load_pem_private_key(key, (SECRET + " too").encode())
