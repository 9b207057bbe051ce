"""The metrics endpoint beyond loopback: TLS, client certificates, basic auth, warnings, reloads (issue 10).

Real sockets, real TLS (certificates made by the openssl command for each
test), real bcrypt hashes: nothing about the transport is mocked.
"""

from __future__ import annotations

import base64
import http.client
import logging
import os
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import bcrypt
import pytest

from autonumad.cli import main
from autonumad.service.config import Config, load_config
from autonumad.service.metrics import DaemonMetrics, reload_metrics
from autonumad.service.webconfig import WebConfigError, load_web_config

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, both signed by the CA."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(d / f"{name}.key"),
                "-out", str(d / f"{name}.csr"))
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"),
                "-CAcreateserial", "-days", "2", "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.crt"))
    return d


HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()


def web_file(tmp_path: Path, text: str) -> str:
    p = tmp_path / "web.toml"
    p.write_text(text)
    os.chmod(p, 0o600)
    return str(p)


def get(url: str, *, ctx: ssl.SSLContext | None = None, user: str | None = None, password: str = "") -> int:
    req = urllib.request.Request(url)
    if user is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            body = r.read()
            assert b"autonumad_passes_total" in body
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_basic_auth_over_tls(tmp_path, pki):
    web = load_web_config(web_file(tmp_path, f"""
[tls_server_config]
cert_file = "{pki}/server.crt"
key_file = "{pki}/server.key"
[basic_auth_users]
prometheus = "{HASH}"
"""))
    m = DaemonMetrics(process_metrics=False)
    address, port = m.serve("127.0.0.1", 0, web=web)
    try:
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        url = f"https://{address}:{port}/metrics"
        assert get(url, ctx=ctx) == 401
        assert get(url, ctx=ctx, user="prometheus", password="wrong") == 401
        assert get(url, ctx=ctx, user="nobody", password="s3cret") == 401
        assert get(url, ctx=ctx, user="prometheus", password="s3cret") == 200
        assert get(url, ctx=ctx, user="prometheus", password="s3cret") == 200  # cached check
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):  # plain HTTP
            get(f"http://{address}:{port}/metrics", user="prometheus", password="s3cret")
    finally:
        m.close()


def test_client_certificate_required_with_a_client_ca(tmp_path, pki):
    web = load_web_config(web_file(tmp_path, f"""
[tls_server_config]
cert_file = "{pki}/server.crt"
key_file = "{pki}/server.key"
client_ca_file = "{pki}/ca.crt"
"""))
    m = DaemonMetrics(process_metrics=False)
    address, port = m.serve("127.0.0.1", 0, web=web)
    try:
        url = f"https://{address}:{port}/metrics"
        anonymous = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            get(url, ctx=anonymous)
        with_cert = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        with_cert.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
        assert get(url, ctx=with_cert) == 200
    finally:
        m.close()


@pytest.mark.parametrize("text,message", [
    ("[tls_server_config]\ncert_file = \"/nonexistent.crt\"\nkey_file = \"/nonexistent.key\"\n", "TLS"),
    ("[tls_server_config]\ncert_file = \"/a.crt\"\n", "needs both"),
    ("[basic_auth_users]\nprometheus = \"plaintext\"\n", "bcrypt hash"),
    ("[users]\n", "unknown section"),
    ("not toml [", "not valid TOML"),
])
def test_bad_web_config_is_one_line(tmp_path, text, message):
    with pytest.raises(WebConfigError, match=message) as ei:
        load_web_config(web_file(tmp_path, text))
    assert "\n" not in str(ei.value)


def test_check_config_warns_about_a_listen_beyond_loopback(tmp_path, capsys):
    """main: the warning existed in config_warnings but nothing printed or logged it."""
    cfg = tmp_path / "a.toml"
    cfg.write_text('[metrics]\nlisten = "0.0.0.0:9901"\n')
    os.chmod(cfg, 0o644)
    assert main(["check-config", str(cfg)]) == 0
    err = capsys.readouterr().err
    assert "metrics.listen = '0.0.0.0:9901' is reachable from other hosts" in err and "web_config" in err


def test_check_config_checks_the_web_config(tmp_path, capsys):
    web = web_file(tmp_path, "[basic_auth_users]\nprometheus = \"plaintext\"\n")
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'[metrics]\nweb_config = "{web}"\n')
    os.chmod(cfg, 0o644)
    assert main(["check-config", str(cfg)]) == 1
    assert "bcrypt hash" in capsys.readouterr().err


def test_reload_applies_metrics_changes_or_says_restart(caplog):
    m = DaemonMetrics(process_metrics=False)
    old = Config().metrics
    with caplog.at_level(logging.INFO, logger="autonumad"):
        reload_metrics(m, old, replace(old, top_processes=5))
        assert m.collector.top_processes == 5
        assert "[metrics] changes applied" in caplog.text
        caplog.clear()
        reload_metrics(m, old, replace(old, listen="127.0.0.1:9999"))
        assert "listen changed: that needs a restart" in caplog.text
        caplog.clear()
        reload_metrics(None, replace(old, listen=""), old)
        assert "needs a restart" in caplog.text
