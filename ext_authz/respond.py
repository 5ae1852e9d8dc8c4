"""Response: turn a Decision into Envoy's CheckResponse (pure).

Envoy applies OkHttpResponse.headers first and headers_to_remove afterwards, so a header that keyrelay sets is
never listed for removal: sets use OVERWRITE_IF_EXISTS_OR_ADD, which replaces a client-sent copy anyway.
"""

from __future__ import annotations

import json

from keyrelay_common.identity import CREDENTIAL_HEADER, KEY_ID_HEADER, TENANT_HEADER

from ._gen.envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from ._gen.envoy.service.auth.v3.external_auth_pb2 import CheckResponse, DeniedHttpResponse
from ._gen.envoy.type.v3.http_status_pb2 import HttpStatus
from ._gen.google.rpc.status_pb2 import Status
from .decide import Decision
from .extract import API_KEY, AUTHORIZATION

OVERWRITE = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
SET_BY_US = frozenset({KEY_ID_HEADER, TENANT_HEADER, CREDENTIAL_HEADER})

# google.rpc.Code values
GRPC_OK = 0
GRPC_CODE_FOR_STATUS = {400: 3, 401: 16, 403: 7, 429: 8, 500: 13, 503: 14}  # INVALID_ARGUMENT, UNAUTHENTICATED, ...


def error_body(error_type: str, message: str) -> str:
    return json.dumps({"type": "error", "error": {"type": error_type, "message": message}}, separators=(",", ":"))


def headers_to_remove(decision: Decision, client_authz_headers: tuple[str, ...]) -> list[str]:
    remove = [API_KEY]
    if decision.forward_key is None:
        remove.append(AUTHORIZATION)
    for name in client_authz_headers:
        if name not in SET_BY_US or (name == TENANT_HEADER and not decision.tenant) or (
                name == KEY_ID_HEADER and not decision.key_id):
            remove.append(name)
    return remove


def _set_header(headers, name: str, value: str) -> None:
    option = headers.add(append_action=OVERWRITE)
    option.header.key = name
    option.header.value = value


def allow_response(decision: Decision, client_authz_headers: tuple[str, ...] = ()) -> CheckResponse:
    # Built in place (repeated-field add() and Struct.fields) rather than from nested constructors and
    # Struct.update(): the same bytes in about half the time (~5 µs instead of ~10 µs per check).
    response = CheckResponse()
    response.status.code = GRPC_OK
    ok = response.ok_response
    headers = ok.headers
    meta = response.dynamic_metadata.fields
    if decision.forward_key is not None:
        _set_header(headers, AUTHORIZATION, "Bearer " + decision.forward_key)
    if decision.key_id:
        _set_header(headers, KEY_ID_HEADER, decision.key_id)
        meta["key_id"].string_value = decision.key_id
    if decision.tenant:
        _set_header(headers, TENANT_HEADER, decision.tenant)
        meta["tenant"].string_value = decision.tenant
    _set_header(headers, CREDENTIAL_HEADER, decision.credential)
    meta["credential"].string_value = decision.credential
    meta["route"].string_value = decision.route
    ok.headers_to_remove.extend(headers_to_remove(decision, client_authz_headers))
    return response


_JSON = HeaderValueOption(header=HeaderValue(key="content-type", value="application/json"), append_action=OVERWRITE)


def deny_response(decision: Decision) -> CheckResponse:
    response = CheckResponse(
        status=Status(code=GRPC_CODE_FOR_STATUS.get(decision.status, 7), message=decision.message),
        denied_response=DeniedHttpResponse(
            status=HttpStatus(code=decision.status),
            headers=[_JSON],
            body=error_body(decision.error_type, decision.message),
        ),
    )
    if decision.retry_after:
        _set_header(response.denied_response.headers, "retry-after", str(decision.retry_after))
    meta = {"reason": decision.reason, "route": decision.route}
    if decision.key_id:
        meta["key_id"] = decision.key_id
    response.dynamic_metadata.update(meta)
    return response


def build_response(decision: Decision, client_authz_headers: tuple[str, ...] = ()) -> CheckResponse:
    if decision.allowed:
        return allow_response(decision, client_authz_headers)
    return deny_response(decision)
