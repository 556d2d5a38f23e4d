"""Throwaway TLS certificates for loopback servers, made with the ``openssl`` CLI.

One idea: a test CA and the certificates it signs, shaped the way a strict
X.509 verifier wants them, so TLS tests pass wherever verification is
strict. Python 3.13 turned ``ssl.VERIFY_X509_STRICT`` on in
``ssl.create_default_context()``; under it OpenSSL rejects a CA without a key
usage extension ("CA cert does not include key usage extension"), which is
what ``openssl req -x509`` makes by default. So every extension is written
here explicitly, from our own config file, never from the system's
``openssl.cnf``:

- the CA: ``basicConstraints`` critical ``CA:TRUE``, ``keyUsage`` critical
  ``keyCertSign, cRLSign``, subject and authority key identifiers;
- the server: ``subjectAltName`` for every host given (IPs as ``IP:``, names
  as ``DNS:``), ``extendedKeyUsage`` ``serverAuth``, ``keyUsage``
  ``digitalSignature``, ``basicConstraints`` ``CA:FALSE``, key identifiers;
- a client certificate (``clientAuth``) for servers that ask for one.

``ca_key_usage=False`` leaves the CA's key usage out on purpose: the CA a
strict verifier refuses, for tests of what a user with such a CA sees.

Keys are EC P-256 (fast to make, accepted by Redis and etcd). Nothing here is
secret beyond the test: the keys are written unencrypted, ``0600``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import secrets
import subprocess
from collections.abc import Sequence
from pathlib import Path

from resilient.testing._binaries import which

__all__ = ["Certificates", "make_certificates"]

OPENSSL_TIMEOUT = 60.0  # seconds per openssl run: a backstop for a loaded box
_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")

# One config for every step; `-extensions` picks the section a certificate gets.
# Every section also carries subject and authority key identifiers (_KEY_IDS).
_CA = "basicConstraints = critical, CA:TRUE"
_LEAF = ("basicConstraints = critical, CA:FALSE", "keyUsage = critical, digitalSignature")
_SECTIONS: dict[str, tuple[str, ...]] = {
    "ca": (_CA, "keyUsage = critical, keyCertSign, cRLSign"),
    "ca_without_key_usage": (_CA,),
    "server": (*_LEAF, "extendedKeyUsage = serverAuth", "subjectAltName = {alt_names}"),
    "client": (*_LEAF, "extendedKeyUsage = clientAuth"),
}
_KEY_IDS = ("subjectKeyIdentifier = hash", "authorityKeyIdentifier = keyid:always")


def _config(alt_names: str) -> str:
    lines = ["[req]", "distinguished_name = dn", "[dn]"]
    for name, extensions in _SECTIONS.items():
        lines += [f"[{name}]", *extensions, *_KEY_IDS]
    return "\n".join(lines).format(alt_names=alt_names) + "\n"


@dataclasses.dataclass(frozen=True, slots=True)
class Certificates:
    """The PEM files ``make_certificates`` wrote (all in ``directory``).

    ``ca`` is what clients trust (``ssl_ca_certs=``, ``ca_cert=``); servers
    take ``server_cert``/``server_key`` and, to check clients, ``ca``.
    """

    directory: Path
    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    hosts: tuple[str, ...]


def make_certificates(
    directory: str | os.PathLike[str],
    *,
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
    days: int = 2,
    ca_key_usage: bool = True,
    openssl: str = "openssl",
) -> Certificates:
    """Make a CA and a server and a client certificate it signed, in ``directory``.

    Args:
        directory: an existing directory to write into (the caller removes it).
        hosts: what the server certificate is for; IP addresses become
            ``IP:`` alternative names, the rest ``DNS:``. The first is the CN.
        days: validity of every certificate.
        ca_key_usage: False makes a CA without the key usage extension, which
            strict verification (Python 3.13+'s default) refuses.
        openssl: the ``openssl`` executable (looked up on PATH).

    Raises:
        MissingBinaryError: ``openssl`` is not on PATH.
        ValueError: no hosts, or days < 1.
        subprocess.CalledProcessError: openssl failed (its stderr is attached).
    """
    if not hosts:
        raise ValueError("hosts must name at least one IP address or DNS name")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days!r}")
    binary = which(openssl, "install OpenSSL (e.g. apt-get install openssl)")
    root = Path(directory)
    config = root / "openssl.cnf"
    config.write_text(_config(", ".join(_alt_name(h) for h in hosts)))

    def run(*args: str) -> None:
        subprocess.run(
            [binary, *args],
            cwd=root,
            check=True,
            capture_output=True,
            timeout=OPENSSL_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )

    signing = ("-days", str(days), "-sha256")
    ca_section = "ca" if ca_key_usage else "ca_without_key_usage"
    run("req", "-x509", *_KEY, "-keyout", "ca.key", "-out", "ca.pem", *signing,
        "-subj", "/CN=resilient-test-ca",
        "-config", str(config), "-extensions", ca_section)  # fmt: skip
    for who, common_name in (("server", hosts[0]), ("client", "resilient-test-client")):
        run("req", "-new", *_KEY, "-keyout", f"{who}.key", "-out", f"{who}.csr",
            "-subj", f"/CN={common_name}", "-config", str(config))  # fmt: skip
        run("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-set_serial", str(secrets.randbits(63) | 1), "-out", f"{who}.pem",
            *signing, "-extfile", str(config), "-extensions", who)  # fmt: skip
        (root / f"{who}.csr").unlink()
    for key in ("ca.key", "server.key", "client.key"):
        (root / key).chmod(0o600)
    return Certificates(
        directory=root,
        ca=root / "ca.pem",
        ca_key=root / "ca.key",
        server_cert=root / "server.pem",
        server_key=root / "server.key",
        client_cert=root / "client.pem",
        client_key=root / "client.key",
        hosts=tuple(hosts),
    )


def _alt_name(host: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return f"DNS:{host}"
    return f"IP:{host}"
