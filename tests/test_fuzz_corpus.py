"""
Every fuzz target over its corpus: the seeds and every input a fuzzing run
found that broke a property, so that what was found once stays fixed.  The
targets are plain functions of bytes; atheris is not needed to run them.
"""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.fuzz.targets import TARGETS

CORPUS = Path(__file__).parent / "fuzz" / "corpus"


class FuzzCorpusTests(SynchronousTestCase):
    """
    Each target holds its properties on each input of its corpus.
    """

    def _run_corpus(self, target: str) -> None:
        inputs = sorted((CORPUS / target).iterdir())
        self.assertTrue(inputs, f"no corpus for {target}")
        for path in inputs:
            try:
                TARGETS[target](path.read_bytes())
            except Exception as failure:  # noqa: BLE001 - named in the failure
                self.fail(f"{target} {path.name}: {failure!r}")

    def test_every_target_has_a_corpus(self) -> None:
        """
        Guards that a target added without seeds is noticed.
        """
        self.assertEqual(
            sorted(TARGETS), sorted(path.name for path in CORPUS.iterdir())
        )

    def test_wire_corpus(self) -> None:
        """
        Guards the line framer and parser's round trip and errors.
        """
        self._run_corpus("wire")

    def test_policy_corpus(self) -> None:
        """
        Guards that a policy grants only what its file writes.
        """
        self._run_corpus("policy")

    def test_settings_corpus(self) -> None:
        """
        Guards that the config loader gives what the file says, or a clear error.
        """
        self._run_corpus("settings")

    def test_identity_corpus(self) -> None:
        """
        Guards that no certificate maps to an identity that is not a name token.
        """
        self._run_corpus("identity")

    def test_trust_corpus(self) -> None:
        """
        Guards that CA bundles and CRL files load or fail in words.
        """
        self._run_corpus("trust")

    def test_display_corpus(self) -> None:
        """
        Guards that nothing a server sends is shown with a control character.
        """
        self._run_corpus("display")
