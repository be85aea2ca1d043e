"""Fixtures of the security tests: certificates made for the session (the launcher and
token files come from tests/conftest.py)."""

from __future__ import annotations

import pytest

from .certs import Certs, make_certs


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))
