"""Who sent a request, and under which tenant its receipt is written.

Clients authenticate with a bearer key of the keys file (:mod:`sprout.server.keys`),
which names their tenant; the tenant header is honoured only for keys marked
``trusted_gateway`` (an ordinary key naming another tenant gets a 403), so a receipt's
tenant cannot be forged. The single ``server_api_key`` still works, bound to no tenant
(the header is taken as sent), as does an open proxy with no key at all.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from sprout.server._errors import ApiError, bad
from sprout.server._openapi import OPT_OUT_FALSE, OPT_OUT_TRUE
from sprout.server.keys import TENANT_MAX_LENGTH, KeyRing, key_digest, valid_tenant

# The proxy's one logger (see sprout.server._errors).
log = logging.getLogger("sprout.server")


@dataclass(frozen=True)
class Caller:
    """Who sent a request, as its API key says.

    Attributes:
        tenant: the key's tenant (None: a key bound to no tenant, or an open proxy).
        may_name_tenant: the tenant header is honoured (a trusted gateway's key, the
            single ``server_api_key``, an open proxy).
        key_id: the keys-file entry's id, or None.
    """

    tenant: str | None
    may_name_tenant: bool
    key_id: str | None = None


ANYONE = Caller(None, True)


@dataclass(frozen=True)
class Access:
    """The proxy's access rules: its keys and its per-request header names.

    Attributes:
        legacy_digest: SHA-256 of the single ``server_api_key``, or None.
        keyring: the keys file, or None.
        tenant_header: the (lower-case) header naming the tenant.
        opt_out_header: the (lower-case) header opting a request out of carbon shaping.
    """

    legacy_digest: bytes | None
    keyring: KeyRing | None
    tenant_header: str
    opt_out_header: str

    @property
    def keyed(self) -> bool:
        """Whether clients must send a bearer key."""
        return self.legacy_digest is not None or self.keyring is not None

    def authorize(self, headers: Mapping[str, str]) -> Caller:
        """The caller of a request with these headers.

        Raises:
            ApiError: 401 for a missing, unknown or revoked key.
        """
        if not self.keyed:
            return ANYONE
        scheme, _, given = headers.get("authorization", "").partition(" ")
        given = given.strip()
        # Keys are compared as SHA-256 digests, in constant time (so response times tell
        # nothing about them), against every key; a key is never logged.
        digest = key_digest(given)
        entry = self.keyring.match(digest) if self.keyring is not None else None
        legacy = self.legacy_digest is not None and hmac.compare_digest(digest, self.legacy_digest)
        if scheme.lower() == "bearer" and given:
            if entry is not None and entry.revoked:
                log.info("refused revoked API key %r (tenant %r)", entry.id, entry.tenant)
                raise ApiError(
                    401,
                    f"This API key (id {entry.id!r}) has been revoked; ask the proxy's "
                    "operator for a new one",
                    code="revoked_api_key",
                )
            if entry is not None:
                return Caller(entry.tenant, entry.trusted_gateway, entry.id)
            if legacy:
                return ANYONE
        raise ApiError(
            401,
            "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
            param=None,
            code="invalid_api_key",
        )

    def tenant_and_opt_out(
        self, headers: Mapping[str, str], caller: Caller
    ) -> tuple[str | None, bool]:
        """The tenant a request is recorded under and whether it opted out.

        Raises:
            ApiError: 403 for a key naming a tenant it is not bound to, 400 for a malformed
                header.
        """
        tenant_header, opt_out_header = self.tenant_header, self.opt_out_header
        tenant = caller.tenant
        sent = headers.get(tenant_header)
        if sent is not None:
            if not caller.may_name_tenant and sent.strip(" \t") != caller.tenant:
                raise ApiError(
                    403,
                    f"header {tenant_header}: this API key (id {caller.key_id!r}) is bound to "
                    f"tenant {caller.tenant!r} and may not name another; drop the header, or "
                    "use a key marked trusted_gateway in the keys file",
                    type="permission_error",
                    param=tenant_header,
                    code="tenant_header_not_allowed",
                )
            if not valid_tenant(sent):
                raise bad(
                    f"header {tenant_header}: expected 1 to {TENANT_MAX_LENGTH} printable "
                    "ASCII characters",
                    tenant_header,
                    "invalid_header",
                )
            tenant = sent.strip(" ")
        flag = headers.get(opt_out_header)
        opt_out = False
        if flag is not None:
            value = flag.strip(" \t").lower()
            if value not in (*OPT_OUT_TRUE, *OPT_OUT_FALSE):
                raise bad(
                    f"header {opt_out_header}: expected true or false",
                    opt_out_header,
                    "invalid_header",
                )
            opt_out = value in OPT_OUT_TRUE
        return tenant, opt_out
