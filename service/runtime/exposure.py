"""How a server is reached, and by whom: TLS, mTLS, the callers gate, and the refusal
to listen unguarded anywhere but on loopback."""

import asyncio
import logging
import ssl
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from service.cli.client import is_loopback
from service.runtime.config import Settings
from service.security.callers import Gate
from service.security.ratelimit import FailureLimiter, limiter

log = logging.getLogger(__name__)


def gate(settings: Settings) -> Gate | None:
    """The gate every call passes, or None when every caller is anonymous."""
    if settings.callers_file or settings.tls_client_ca:
        guarded = Gate(
            settings.callers_file or None,
            mtls=bool(settings.tls_client_ca),
            failures=limiter(settings.failed_auth_rate, settings.failed_auth_burst),
        )
        if not settings.tls_cert and not is_loopback(settings.address):
            log.warning(
                "serving %s without TLS: bearer tokens cross the network in clear "
                "(use --tls-cert and --tls-key, or a TLS proxy in front)",
                settings.address,
            )
        return guarded
    if is_loopback(settings.address):
        log.warning(
            "no callers file: every call is accepted, as 'anonymous', and only on loopback "
            "(%s); set EDGEKEYS_CALLERS_FILE to require tokens",
            settings.address,
        )
    else:  # config.from_arguments refuses this without --insecure
        log.warning(
            "--insecure: no callers file and no mTLS, yet listening on %s: anyone who can "
            "reach it may create, read and delete every key",
            settings.address,
        )
    return None


def bind(server: grpc.aio.Server, settings: Settings) -> int:
    """Add the listening port, with TLS when configured. Returns the bound port."""
    if not settings.tls_cert:
        port: int = server.add_insecure_port(settings.address)
        return port
    try:
        chain = Path(settings.tls_cert).read_bytes()
        key = Path(settings.tls_key).read_bytes()
        client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    except OSError as error:
        raise ValueError(f"cannot read a TLS file: {error}") from None
    _check_pem(chain, key, client_ca)
    credentials = grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
    port = server.add_secure_port(settings.address, credentials)
    return port


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The HTTP listener's TLS, from the same files as gRPC's (checked by `bind`)."""
    if not settings.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    if settings.tls_client_ca:
        context.load_verify_locations(settings.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def watch(guard: Gate, interval: float = 1.0) -> None:
    """Reload the callers file whenever it changes on disk."""
    while True:
        await asyncio.sleep(interval)
        if guard.changed_on_disk():
            await asyncio.to_thread(guard.reload)


def _check_pem(chain: bytes, key: bytes, client_ca: bytes | None) -> None:
    """gRPC reports a bad certificate or key only as a failure to bind: say which."""
    for flag, certificates in (("--tls-cert", chain), ("--tls-client-ca", client_ca)):
        if certificates is None:
            continue
        try:
            x509.load_pem_x509_certificates(certificates)
        except ValueError:
            raise ValueError(f"{flag}: not a PEM certificate") from None
    try:
        serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        raise ValueError("--tls-key: not an unencrypted PEM private key") from None


def validation_failures(settings: Settings) -> FailureLimiter | None:
    """The limit on failed validations per end client, shared by ValidateApiKey and Check."""
    return limiter(settings.failed_validation_rate, settings.failed_validation_burst)
