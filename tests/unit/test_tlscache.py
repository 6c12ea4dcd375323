"""Prefect clients of a serving process share their TLS context (``deployments.tlscache``).

Real Prefect clients are built (no request is sent: building one does not connect); what is
counted is the real ``ssl.create_default_context`` being called."""

from __future__ import annotations

import ssl

import prefect.client.orchestration as orchestration
import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from metalflow.deployments import tlscache


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = ssl.create_default_context

    def counting(*args, **kwargs):
        calls.append(kwargs.get("cafile"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counting)
    monkeypatch.setattr(orchestration, "ssl", ssl)  # as Prefect ships, whatever ran before
    monkeypatch.setattr(tlscache, "_contexts", {})
    return calls


def contexts_of_clients(n: int) -> list:
    with temporary_settings({PREFECT_API_URL: "https://127.0.0.1:9/api"}):
        out = []
        for i in range(n):
            client = get_client(sync_client=True) if i % 2 else get_client()
            out.append(client)
        return out


def test_without_it_every_client_builds_a_context(counted):
    contexts_of_clients(4)
    assert len(counted) == 4


def test_installed_the_clients_share_one_context_per_bundle(counted):
    assert tlscache.install() and tlscache.install()  # a second install changes nothing
    contexts_of_clients(6)
    assert len(counted) == 1 and counted[0]  # one context, with the CA bundle loaded
    ctx = orchestration.ssl.create_default_context(cafile=counted[0])
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert orchestration.ssl.SSLContext is ssl.SSLContext  # everything else is the real module


def test_a_changed_prefect_is_left_alone(counted, monkeypatch):
    monkeypatch.setattr(orchestration, "ssl", object())
    assert tlscache.install() is False
