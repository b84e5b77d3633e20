"""The event server: intake, store, API, users and sessions (issue 11).

This package may import events/, config/, trailsdb/ and matchers/, never engine/ or workers/
(tests/test_layering.py). server/auth/ owns users, passwords, sessions and scopes.
"""
