"""TLS and basic authentication for the metrics endpoint, the way Prometheus exporters do it.

Exporters built on prometheus/exporter-toolkit read a "web config" file
(docs/web-configuration.md there): `tls_server_config` (cert_file,
key_file, client_ca_file, client_auth_type) and `basic_auth_users` (user
-> bcrypt hash). autonumad reads the same keys from a TOML file named by
`[metrics] web_config` (TOML, like the rest of its configuration):

    [tls_server_config]
    cert_file = "/etc/autonumad/metrics.crt"
    key_file = "/etc/autonumad/metrics.key"
    # optional: only clients with a certificate signed by this CA get in
    client_ca_file = "/etc/autonumad/prometheus-ca.crt"

    [basic_auth_users]
    prometheus = "$2b$12$..."   # htpasswd -nBC 12 prometheus, or python -m bcrypt

TLS comes from the standard library's `ssl` (TLS 1.2 at least, the
server's certificate chain, and with a client CA CERT_REQUIRED: a client
without a certificate signed by it fails the handshake). Passwords are
checked with `bcrypt.checkpw`; a hash costs tens of milliseconds by
design, so a successful (user, password) pair is remembered by its SHA-256
for the process's lifetime, as exporter-toolkit caches it too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import socket
import ssl
import stat
import threading
import tomllib
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any, Callable, Iterable, Mapping
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from autonumad.errors import AutonumadError

_KEYS_TLS = {"cert_file", "key_file", "client_ca_file"}
_REALM = "autonumad"


class WebConfigError(AutonumadError):
    """The web config file cannot be used; one line naming the file."""


@dataclass(frozen=True)
class WebConfig:
    cert_file: str | None = None
    key_file: str | None = None
    client_ca_file: str | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash

    @property
    def tls(self) -> bool:
        return self.cert_file is not None

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file:
            ctx.load_verify_locations(cafile=self.client_ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


def load_web_config(path: str) -> WebConfig:
    """Read and check the file (see the module doc); WebConfigError with one line otherwise."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise WebConfigError(f"{path}: not a regular file")
            # It holds password hashes and names the private key: not for everyone to rewrite.
            if stat.S_IMODE(st.st_mode) & (stat.S_IWGRP | stat.S_IWOTH):
                raise WebConfigError(f"{path}: writable by group or others (chmod go-w)")
            doc = tomllib.load(f)
    except OSError as e:
        raise WebConfigError(f"{path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise WebConfigError(f"{path}: not valid TOML: {e}") from None
    unknown = set(doc) - {"tls_server_config", "basic_auth_users"}
    if unknown:
        raise WebConfigError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}")
    tls = doc.get("tls_server_config", {})
    users = doc.get("basic_auth_users", {})
    if not isinstance(tls, dict) or not isinstance(users, dict):
        raise WebConfigError(f"{path}: tls_server_config and basic_auth_users must be tables")
    bad = set(tls) - _KEYS_TLS
    if bad:
        raise WebConfigError(f"{path}: tls_server_config: unknown key(s) {', '.join(sorted(bad))}")
    for k, v in tls.items():
        if not isinstance(v, str) or not v.startswith("/"):
            raise WebConfigError(f"{path}: tls_server_config.{k}: expected an absolute path")
    if tls and not {"cert_file", "key_file"} <= set(tls):
        raise WebConfigError(f"{path}: tls_server_config needs both cert_file and key_file")
    hashes: dict[str, bytes] = {}
    for user, h in users.items():
        # bcrypt's modular crypt format: $2a$/$2b$/$2y$, a two-digit cost, 53 characters of salt and hash.
        if not isinstance(h, str) or len(h) != 60 or h[:4] not in ("$2a$", "$2b$", "$2y$") or ":" in user:
            raise WebConfigError(f"{path}: basic_auth_users.{user}: expected a bcrypt hash ($2b$...)")
        hashes[user] = h.encode("ascii")
    if hashes:
        try:
            import bcrypt  # noqa: F401 - optional: only basic auth needs it
        except ImportError:
            raise WebConfigError(f"{path}: basic_auth_users needs the bcrypt module (Debian: apt install "
                                 "python3-bcrypt; pip: pip install 'autonumad[web]')") from None
    cfg = WebConfig(tls.get("cert_file"), tls.get("key_file"), tls.get("client_ca_file"), hashes)
    if cfg.tls:
        try:
            cfg.ssl_context()  # the files exist, parse, and the key matches the certificate
        except (OSError, ssl.SSLError) as e:
            raise WebConfigError(f"{path}: TLS: {e}") from None
    return cfg


class BasicAuth:
    """WSGI middleware: 401 unless the request carries a user and password of `users`."""

    def __init__(self, app: Callable, users: Mapping[str, bytes]):
        import bcrypt

        self.app, self.users, self._checkpw = app, dict(users), bcrypt.checkpw
        self._good: set[bytes] = set()
        self._lock = threading.Lock()

    def _ok(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if not sep or hashed is None:
            return False
        key = hashlib.sha256(user.encode() + b"\0" + password.encode() + b"\0" + hashed).digest()
        with self._lock:
            if any(hmac.compare_digest(key, k) for k in self._good):
                return True
        if not self._checkpw(password.encode("utf-8"), hashed):
            return False
        with self._lock:
            self._good.add(key)
        return True

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if self._ok(environ.get("HTTP_AUTHORIZATION", "")):
            return self.app(environ, start_response)
        start_response("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8"),
                                            ("WWW-Authenticate", f'Basic realm="{_REALM}"')])
        return [b"Unauthorized\n"]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that fails the TLS handshake (no certificate, wrong CA) or
        # drops the connection is its problem, not a traceback in our log.
        pass


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *_: Any) -> None:  # scrapes are not log lines
        pass


def serve(app: Callable, address: str, port: int, web: WebConfig) -> tuple[Any, threading.Thread]:
    """Serve `app` on address:port with `web`'s TLS and basic auth; (server, thread)."""
    if web.users:
        app = BasicAuth(app, web.users)

    class Server(_Server):
        address_family = socket.AF_INET6 if ":" in address else socket.AF_INET

    httpd = make_server(address, port, app, Server, handler_class=_QuietHandler)
    if web.tls:
        # The handshake happens in the request's thread (first read), so a
        # client that connects and stalls does not block the accept loop.
        httpd.socket = web.ssl_context().wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
    t = threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True)
    t.start()
    return httpd, t
