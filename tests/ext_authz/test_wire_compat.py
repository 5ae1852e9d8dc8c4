"""Wire compatibility of our compiled protos with Envoy's API, using envoy-data-plane (full-fidelity classes
generated from Envoy's own .proto files) as the oracle: encode with one, decode with the other, both ways."""

from __future__ import annotations

import datetime

import pytest
from envoy_data_plane.envoy.config.core import v3 as core
from envoy_data_plane.envoy.service.auth import v3 as auth
from envoy_data_plane.envoy.type import v3 as typ
from envoy_data_plane.google import protobuf as gp
from envoy_data_plane.google import rpc

from ext_authz._gen.envoy.config.core.v3.base_pb2 import HeaderValueOption
from ext_authz._gen.envoy.service.auth.v3 import external_auth_pb2 as ours
from ext_authz._gen.envoy.service.auth.v3 import external_auth_pb2_grpc
from ext_authz.decide import Decision, deny
from ext_authz.respond import build_response

KEY = "sk-wire-test-0123456789"


def oracle_request(raw_headers: bool) -> auth.CheckRequest:
    http = auth.AttributeContextHttpRequest(
        id="9f0c", method="POST", path="/v1/messages?beta=true", host="api.example", scheme="https",
        size=1234, protocol="HTTP/1.1", body='{"model":"claude"}', raw_body=b"\x00\x01binary\xff")
    if raw_headers:
        http.header_map = core.HeaderMap(headers=[
            core.HeaderValue(key="x-api-key", raw_value=KEY.encode()),
            core.HeaderValue(key="x-authz-tenant", raw_value=b"forged"),
            core.HeaderValue(key="x-custom", raw_value=b"\xc3\xa9t\xc3\xa9"),
            core.HeaderValue(key="x-custom", raw_value=b"second"),
        ])
    else:
        http.headers = {"x-api-key": KEY, "authorization": f"Bearer {KEY}", "anthropic-version": "2023-06-01"}
    peer = auth.AttributeContextPeer(
        address=core.Address(socket_address=core.SocketAddress(address="10.1.2.3", port_value=51234)),
        service="client", labels={"app": "claude"}, principal="spiffe://cluster.local/ns/dev/sa/alice")
    return auth.CheckRequest(attributes=auth.AttributeContext(
        source=peer,
        destination=auth.AttributeContextPeer(
            address=core.Address(socket_address=core.SocketAddress(address="10.9.9.9", port_value=8080))),
        request=auth.AttributeContextRequest(time=datetime.datetime(2026, 11, 27, tzinfo=datetime.timezone.utc),
                                             http=http),
        context_extensions={"keyrelay_route": "messages", "other": "x"},
        metadata_context=core.Metadata(filter_metadata={"envoy.lb": gp.Struct(fields={"a": gp.Value(string_value="b")})}),
        tls_session=auth.AttributeContextTlsSession(sni="api.example"),
    ))


@pytest.mark.parametrize("raw_headers", [False, True], ids=["headers-map", "header_map-raw"])
def test_envoy_request_decodes_with_our_protos(raw_headers: bool) -> None:
    original = oracle_request(raw_headers)
    decoded = ours.CheckRequest.FromString(bytes(original))
    attrs = decoded.attributes
    http = attrs.request.http
    assert (http.id, http.method, http.path, http.host, http.scheme, http.size, http.protocol) == (
        "9f0c", "POST", "/v1/messages?beta=true", "api.example", "https", 1234, "HTTP/1.1")
    assert http.body == '{"model":"claude"}' and http.raw_body == b"\x00\x01binary\xff"
    assert dict(attrs.context_extensions) == {"keyrelay_route": "messages", "other": "x"}
    assert attrs.source.address.socket_address.address == "10.1.2.3"
    assert attrs.source.address.socket_address.port_value == 51234
    assert attrs.source.principal.startswith("spiffe://") and dict(attrs.source.labels) == {"app": "claude"}
    assert attrs.request.time.seconds == int(datetime.datetime(2026, 11, 27, tzinfo=datetime.timezone.utc).timestamp())
    assert attrs.metadata_context.filter_metadata["envoy.lb"]["a"] == "b"
    assert attrs.tls_session.sni == "api.example"
    if raw_headers:
        assert http.HasField("header_map") and not http.headers
        assert [(h.key, h.raw_value) for h in http.header_map.headers] == [
            ("x-api-key", KEY.encode()), ("x-authz-tenant", b"forged"), ("x-custom", "été".encode()),
            ("x-custom", b"second")]
    else:
        assert dict(http.headers) == {"x-api-key": KEY, "authorization": f"Bearer {KEY}",
                                      "anthropic-version": "2023-06-01"}
    # Re-encoding with our protos and decoding with the oracle gives back the same message.
    assert auth.CheckRequest.parse(decoded.SerializeToString()) == original


def test_our_request_decodes_with_envoy_protos() -> None:
    from .helpers import check_request
    req = check_request([("x-api-key", KEY), ("x-api-key", "dup")], route="count_tokens", raw=True)
    req.attributes.request.http.body = "hello"
    parsed = auth.CheckRequest.parse(req.SerializeToString())
    assert parsed.attributes.context_extensions == {"keyrelay_route": "count_tokens"}
    assert [(h.key, h.raw_value) for h in parsed.attributes.request.http.header_map.headers] == [
        ("x-api-key", KEY.encode()), ("x-api-key", b"dup"), ("x-request-id", b"req-1")]
    assert parsed.attributes.request.http.body == "hello"


def test_allow_response_decodes_with_envoy_protos() -> None:
    decision = Decision(True, "passthrough", "messages", credential="passthrough", key_id="0123456789abcdef",
                        tenant="team-a", forward_key=KEY)
    ours_bytes = build_response(decision, ("x-authz-tenant", "x-authz-forged")).SerializeToString()
    parsed = auth.CheckResponse.parse(ours_bytes)
    assert parsed.status is not None and parsed.status.code == 0
    assert parsed.denied_response is None and parsed.ok_response is not None
    ok = parsed.ok_response
    assert [(h.header.key, h.header.value, h.append_action) for h in ok.headers] == [
        ("authorization", f"Bearer {KEY}", core.HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD),
        ("x-authz-key-id", "0123456789abcdef", core.HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD),
        ("x-authz-tenant", "team-a", core.HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD),
        ("x-authz-credential", "passthrough", core.HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD),
    ]
    assert all(h.append is None for h in ok.headers)  # the deprecated `append` stays unset
    assert ok.headers_to_remove == ["x-api-key", "x-authz-forged"]
    assert parsed.dynamic_metadata.to_dict() == {"credential": "passthrough", "route": "messages",
                                                 "key_id": "0123456789abcdef", "tenant": "team-a"}


@pytest.mark.parametrize("reason,http_status,grpc_code,error_type", [
    ("missing_key", 401, 16, "authentication_error"),
    ("revoked", 403, 7, "permission_error"),
    ("malformed_key", 400, 3, "invalid_request_error"),
    ("internal_error", 500, 13, "api_error"),
])
def test_denied_response_decodes_with_envoy_protos(reason, http_status, grpc_code, error_type) -> None:
    import json
    parsed = auth.CheckResponse.parse(build_response(deny(reason, "messages", "why", "abcdef0123456789"))
                                      .SerializeToString())
    assert parsed.ok_response is None and parsed.denied_response is not None
    assert parsed.status.code == grpc_code and parsed.status.message == "why"
    denied = parsed.denied_response
    assert int(denied.status.code) == http_status
    assert [(h.header.key, h.header.value) for h in denied.headers] == [("content-type", "application/json")]
    assert json.loads(denied.body) == {"type": "error", "error": {"type": error_type, "message": "why"}}
    assert parsed.dynamic_metadata.to_dict() == {"reason": reason, "route": "messages", "key_id": "abcdef0123456789"}


def test_envoy_response_decodes_with_our_protos() -> None:
    A = core.HeaderValueOptionHeaderAppendAction  # noqa: N806
    envoy_ok = auth.CheckResponse(
        status=rpc.Status(code=0),
        ok_response=auth.OkHttpResponse(
            headers=[core.HeaderValueOption(header=core.HeaderValue(key="authorization", value="Bearer x"),
                                            append_action=A.OVERWRITE_IF_EXISTS_OR_ADD),
                     core.HeaderValueOption(header=core.HeaderValue(key="x-a", raw_value=b"\x01\x02"),
                                            append_action=A.ADD_IF_ABSENT, keep_empty_value=True)],
            headers_to_remove=["x-api-key", "x-authz-evil"],
            response_headers_to_add=[core.HeaderValueOption(header=core.HeaderValue(key="x-r", value="1"))],
            query_parameters_to_set=[core.QueryParameter(key="q", value="v")],
            query_parameters_to_remove=["beta"]),
        dynamic_metadata=gp.Struct(fields={"key_id": gp.Value(string_value="k"), "n": gp.Value(number_value=2.5)}),
    )
    decoded = ours.CheckResponse.FromString(bytes(envoy_ok))
    assert decoded.WhichOneof("http_response") == "ok_response"
    ok = decoded.ok_response
    assert ok.headers[0].header.key == "authorization" and ok.headers[0].append_action == \
        HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    assert ok.headers[1].header.raw_value == b"\x01\x02" and ok.headers[1].append_action == \
        HeaderValueOption.ADD_IF_ABSENT and ok.headers[1].keep_empty_value
    assert list(ok.headers_to_remove) == ["x-api-key", "x-authz-evil"]
    assert ok.response_headers_to_add[0].header.key == "x-r"
    assert (ok.query_parameters_to_set[0].key, ok.query_parameters_to_set[0].value) == ("q", "v")
    assert list(ok.query_parameters_to_remove) == ["beta"]
    assert dict(decoded.dynamic_metadata) == {"key_id": "k", "n": 2.5}
    assert auth.CheckResponse.parse(decoded.SerializeToString()) == envoy_ok

    envoy_denied = auth.CheckResponse(
        status=rpc.Status(code=16, message="no"),
        denied_response=auth.DeniedHttpResponse(status=typ.HttpStatus(code=typ.StatusCode.Unauthorized),
                                                headers=[core.HeaderValueOption(
                                                    header=core.HeaderValue(key="content-type",
                                                                            value="application/json"))],
                                                body='{"type":"error"}'))
    decoded = ours.CheckResponse.FromString(bytes(envoy_denied))
    assert decoded.WhichOneof("http_response") == "denied_response"
    assert decoded.status.code == 16 and decoded.denied_response.status.code == 401
    assert decoded.denied_response.body == '{"type":"error"}'


def test_service_path_is_envoys() -> None:
    assert ours.DESCRIPTOR.services_by_name["Authorization"].full_name == "envoy.service.auth.v3.Authorization"
    method = ours.DESCRIPTOR.services_by_name["Authorization"].methods_by_name["Check"]
    assert method.input_type.full_name == "envoy.service.auth.v3.CheckRequest"
    assert method.output_type.full_name == "envoy.service.auth.v3.CheckResponse"
    import inspect
    assert "/envoy.service.auth.v3.Authorization/Check" in inspect.getsource(external_auth_pb2_grpc)


def test_envoy_request_without_route_and_with_raw_bytes_is_judged_by_path_and_bytes() -> None:
    """What Istio's sidecar sends (no context extensions, raw header bytes): the route comes from the path, and a
    key that is not UTF-8 is malformed, not replaced."""
    from ext_authz.decide import decide
    from ext_authz.extract import headers_from_header_map
    from ext_authz.policy import parse_policy
    from ext_authz.routes import route_of

    original = oracle_request(True)
    original.attributes.context_extensions = {}
    original.attributes.request.http.header_map.headers[0].raw_value = b"\xff\xfe\xfd"
    decoded = ours.CheckRequest.FromString(bytes(original))
    http = decoded.attributes.request.http
    route = route_of(decoded.attributes.context_extensions, http)
    assert route == "messages"
    decision = decide(parse_policy(b"version: 1\nrequire_key: true\n", "p.yaml"), route,
                      headers_from_header_map(http.header_map.headers))
    assert (decision.reason, decision.status) == ("malformed_key", 400)
