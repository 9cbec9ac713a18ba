"""
Coverage-guided fuzz targets for what a peer or an operator can feed
secmsg: each module holds one target, a function of one input's bytes that
asserts the properties its code promises and lets any other exception
escape as a finding.  tests/fuzz/run.py runs them under atheris
(C{make fuzz}); tests/test_fuzz_corpus.py runs them over their corpus in
the suite, so that an input once found stays a test.  docs/fuzzing.md says
more.
"""
