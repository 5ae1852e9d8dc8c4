"""Model routing, settings, credentials and error mapping: pure functions, table-driven."""

from __future__ import annotations

import textwrap

import pytest

from translator import credentials
from translator.caps import caps_for
from translator.errors import ApiError, scrub, upstream_error
from translator.routing import Router, load_routes
from translator.settings import ConfigError, load_settings


def settings(**env):
    return load_settings([], env)


# ------------------------------------------------------------------ routing

ENABLED = {"TRANSLATOR_PROVIDERS": "anthropic,gemini,vertex_ai,bedrock,azure"}

ROUTES = [
    ({}, "gemini-2.5-flash", ("openai", "openai", "gemini-2.5-flash")),  # Gemini not enabled: the default backend
    ({"GEMINI_API_KEY": "k"}, "gemini/gemini-2.5-pro", ("litellm", "gemini", "gemini/gemini-2.5-pro")),
    # env, requested model, (path, provider, upstream model)
    ({}, "claude-sonnet-4-5-20250929", ("openai", "openai", "gpt-4.1")),
    ({}, "claude-opus-4-1", ("openai", "openai", "gpt-4.1")),
    ({}, "claude-3-5-haiku-20241022", ("openai", "openai", "gpt-4.1-mini")),
    ({}, "claude-haiku-4-5", ("openai", "openai", "gpt-4.1-mini")),
    ({}, "gpt-4o", ("openai", "openai", "gpt-4o")),
    ({}, "openai/o3", ("openai", "openai", "o3")),
    ({}, "litellm_proxy/team-model", ("openai", "litellm_proxy", "team-model")),
    (ENABLED, "anthropic/claude-sonnet-4-5", ("anthropic", "anthropic", "claude-sonnet-4-5")),
    (ENABLED, "gemini/gemini-2.5-pro", ("litellm", "gemini", "gemini/gemini-2.5-pro")),
    (ENABLED, "vertex_ai/gemini-2.5-pro", ("litellm", "vertex_ai", "vertex_ai/gemini-2.5-pro")),
    (ENABLED, "bedrock/anthropic.claude-3", ("litellm", "bedrock", "bedrock/anthropic.claude-3")),
    (ENABLED, "azure/my-deployment", ("litellm", "azure", "azure/my-deployment")),
    ({}, "Qwen/Qwen2.5-Coder-32B", ("openai", "openai", "Qwen/Qwen2.5-Coder-32B")),  # HF name on vLLM
    (ENABLED, "gemini-2.5-flash", ("litellm", "gemini", "gemini/gemini-2.5-flash")),
    ({"BIG_MODEL": "o4-mini", "SMALL_MODEL": "gpt-4o-mini"}, "claude-sonnet-4-5", ("openai", "openai", "o4-mini")),
    ({"BIG_MODEL": "litellm_proxy/big"}, "claude-opus-4", ("openai", "litellm_proxy", "big")),
    ({"PREFERRED_PROVIDER": "google"}, "claude-sonnet-4-5", ("litellm", "gemini", "gemini/gemini-2.5-pro")),
    ({"PREFERRED_PROVIDER": "google"}, "claude-haiku-4-5", ("litellm", "gemini", "gemini/gemini-2.5-flash")),
    ({"PREFERRED_PROVIDER": "google", "BIG_MODEL": "gpt-4.1"}, "claude-sonnet-4-5", ("openai", "openai", "gpt-4.1")),
    ({"PREFERRED_PROVIDER": "google", "USE_VERTEX_AUTH": "true"}, "claude-sonnet-4-5",
     ("litellm", "vertex_ai", "vertex_ai/gemini-2.5-pro")),
    ({"PREFERRED_PROVIDER": "anthropic"}, "claude-sonnet-4-5", ("anthropic", "anthropic", "claude-sonnet-4-5")),
    ({"PREFERRED_PROVIDER": "anthropic"}, "claude-haiku-4-5", ("anthropic", "anthropic", "claude-haiku-4-5")),
]


@pytest.mark.parametrize("env,requested,expected", ROUTES)
def test_routing_table(env, requested, expected):
    t = Router(settings(**env)).resolve(requested)
    assert (t.backend, t.provider, t.model) == expected


@pytest.mark.parametrize("env,requested", [
    ({}, "groq/llama-3.3-70b"),
    ({}, "bedrock/anthropic.claude-3"),  # the pod's ambient cloud credentials are never reached
    ({}, "vertex_ai/gemini-2.5-pro"),
    ({}, "anthropic/claude-sonnet-4-5"),
    ({"PREFERRED_PROVIDER": "google"}, "azure/my-deployment"),
    ({"TRANSLATOR_PROVIDERS": "groq"}, "mistral/large"),
])
def test_a_provider_the_operator_did_not_enable_is_a_400_naming_the_model(env, requested):
    with pytest.raises(ApiError) as exc:
        Router(settings(**env)).resolve(requested)
    assert (exc.value.status, exc.value.type) == (400, "invalid_request_error")
    assert repr(requested) in exc.value.message


def test_providers_are_enabled_by_settings_rules_and_the_providers_list(tmp_path):
    f = tmp_path / "routes.yaml"
    f.write_text("rules:\n  - match: fast\n    target: groq/llama-3.3-70b\n")
    r = Router(settings(TRANSLATOR_PROVIDERS="mistral", BIG_MODEL="deepseek/chat"), load_routes(str(f)))
    assert r.resolve("groq/other").provider == "groq"  # a provider the routing file uses
    assert r.resolve("mistral/large").provider == "mistral"
    assert r.resolve("deepseek/coder").provider == "deepseek"
    with pytest.raises(ConfigError):
        Router(settings(TRANSLATOR_PROVIDERS="no-such-provider"))


def test_routing_base_urls_and_key_modes():
    s = settings(OPENAI_BASE_URL="http://gw.local:4000/v1/", ANTHROPIC_BASE_URL="http://a.local",
                 GEMINI_BASE_URL="http://g.local", VERTEX_PROJECT="p1", VERTEX_LOCATION="europe-west4",
                 TRANSLATOR_PROVIDERS="vertex_ai,ollama_chat")
    r = Router(s)
    assert r.resolve("claude-sonnet-4-5").base_url == "http://gw.local:4000/v1"
    assert r.resolve("anthropic/claude-x").base_url == "http://a.local"
    assert r.resolve("gemini/gemini-2.5-pro").base_url == "http://g.local"
    v = r.resolve("vertex_ai/gemini-2.5-pro")
    assert v.key_mode == "none" and dict(v.extra) == {"vertex_project": "p1", "vertex_location": "europe-west4"}
    assert r.resolve("ollama_chat/llama3").key_mode == "optional"
    assert r.resolve("claude-sonnet-4-5").key_mode == "required"


def test_routing_file_rules_glob_exact_caps_and_models(tmp_path):
    f = tmp_path / "routes.yaml"
    f.write_text(textwrap.dedent("""
        version: 1
        rules:
          - match: claude-special
            target: anthropic/claude-sonnet-4-5
          - match: "claude-*-haiku-*"
            target: litellm_proxy/fast
            base_url: http://fast.local/v1
            caps: {max_output_tokens: 1000, top_k: true}
          - match: "claude-*"
            target: gemini/gemini-2.5-pro
    """))
    r = Router(settings(TRANSLATOR_ROUTES=str(f)), load_routes(str(f)))
    assert r.resolve("claude-special").backend == "anthropic"
    fast = r.resolve("claude-3-5-haiku-20241022")
    assert (fast.provider, fast.model, fast.base_url) == ("litellm_proxy", "fast", "http://fast.local/v1")
    caps = caps_for(fast)
    assert caps.max_output_tokens == 1000 and caps.top_k is True
    assert r.resolve("claude-opus-4-1").model == "gemini/gemini-2.5-pro"
    assert r.resolve("gpt-4o").model == "gpt-4o"  # no rule: defaults apply
    assert ("claude-special", "claude-special") in r.claude_models()


@pytest.mark.parametrize("content,fragment", [
    ("rules: [", "invalid YAML"),
    ("- a\n- b\n", "expected a mapping"),
    ("version: 2\n", "version"),
    ("rules:\n  - match: x\n", "target"),
    ("rules:\n  - match: x\n    target: y\n    colour: blue\n", "colour"),
])
def test_routing_file_errors_are_one_line(tmp_path, content, fragment):
    f = tmp_path / "routes.yaml"
    f.write_text(content)
    with pytest.raises(ConfigError) as exc:
        load_routes(str(f))
    assert fragment in str(exc.value) and "\n" not in str(exc.value)
    assert str(f) in str(exc.value)


def test_caps_defaults_from_metadata_and_provider():
    r = Router(settings(TRANSLATOR_PROVIDERS="gemini,deepseek,bedrock,azure,vertex_ai"))
    assert caps_for(r.resolve("claude-sonnet-4-5")).max_output_tokens == 32768  # gpt-4.1
    o3 = caps_for(r.resolve("openai/o3"))
    assert o3.use_max_completion_tokens and o3.reasoning_effort and not o3.sampling_params
    g = caps_for(r.resolve("gemini/gemini-2.5-pro"))
    assert g.gemini_schema and g.top_k and g.reasoning_effort


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize("argv,env,field,value", [
    ([], {}, "port", 8082),
    ([], {"TRANSLATOR_PORT": "9999"}, "port", 9999),
    (["--port", "7000"], {"TRANSLATOR_PORT": "9999"}, "port", 7000),  # flags win
    ([], {"TRANSLATOR_WORKERS": "4"}, "workers", 4),
    ([], {}, "host", "127.0.0.1"),
    ([], {"PREFERRED_PROVIDER": "GOOGLE"}, "big_model", "gemini-2.5-pro"),
    ([], {"PREFERRED_PROVIDER": "google", "SMALL_MODEL": "x"}, "small_model", "x"),
    ([], {"USE_VERTEX_AUTH": "True"}, "use_vertex_auth", True),
    ([], {"OPENAI_BASE_URL": "http://h:1/v1/"}, "openai_base_url", "http://h:1/v1"),
    (["--ping-interval", "2.5"], {}, "ping_interval_s", 2.5),
    ([], {}, "max_body_bytes", 32 * 1024 * 1024),
    # limits: the documented defaults, and each one settable
    ([], {}, "max_connections", 4096),
    ([], {}, "pool_wait_s", 5.0),
    ([], {}, "max_response_head_bytes", 65536),
    ([], {}, "max_response_head_lines", 100),
    ([], {}, "max_response_body_bytes", 16 * 1024 * 1024),
    ([], {}, "max_sse_event_bytes", 4 * 1024 * 1024),
    ([], {}, "max_messages", 100_000),
    ([], {}, "max_content_blocks", 100_000),
    ([], {}, "max_images", 600),
    ([], {}, "tools_cache_bytes", 4 * 1024 * 1024),
    ([], {"TRANSLATOR_TOOLS_CACHE_BYTES": "0"}, "tools_cache_bytes", 0),
    (["--tools-cache-bytes", "65536"], {}, "tools_cache_bytes", 65536),
    ([], {}, "shutdown_grace_s", 100.0),
    ([], {"TRANSLATOR_POOL_WAIT": "0.5"}, "pool_wait_s", 0.5),
    (["--max-response-head-lines", "20"], {}, "max_response_head_lines", 20),
    ([], {"TRANSLATOR_MAX_SSE_EVENT_BYTES": "1048576"}, "max_sse_event_bytes", 1048576),
    ([], {"TRANSLATOR_MAX_IMAGES": "100"}, "max_images", 100),
    ([], {"TRANSLATOR_PROVIDERS": " Groq, bedrock ,"}, "providers", "groq,bedrock"),
])
def test_settings_sources(argv, env, field, value):
    assert getattr(load_settings(argv, env), field) == value


@pytest.mark.parametrize("argv,env,fragment", [
    ([], {"TRANSLATOR_PORT": "http"}, "TRANSLATOR_PORT"),
    (["--port", "70000"], {}, "--port"),
    ([], {"TRANSLATOR_WORKERS": "0"}, "TRANSLATOR_WORKERS"),
    ([], {"PREFERRED_PROVIDER": "mistral"}, "PREFERRED_PROVIDER"),
    ([], {"USE_VERTEX_AUTH": "maybe"}, "USE_VERTEX_AUTH"),
    ([], {"OPENAI_BASE_URL": "gw.local"}, "OPENAI_BASE_URL"),
    (["--routes", "/nonexistent/routes.yaml"], {}, "--routes"),
    ([], {"TRANSLATOR_MAX_SSE_EVENT_BYTES": "10"}, "TRANSLATOR_MAX_SSE_EVENT_BYTES"),
    ([], {"TRANSLATOR_MAX_MESSAGES": "0"}, "TRANSLATOR_MAX_MESSAGES"),
    ([], {"TRANSLATOR_TOOLS_CACHE_BYTES": "-1"}, "TRANSLATOR_TOOLS_CACHE_BYTES"),
    ([], {"TRANSLATOR_SHUTDOWN_GRACE": "-1"}, "TRANSLATOR_SHUTDOWN_GRACE"),
])
def test_settings_errors(argv, env, fragment):
    with pytest.raises(ConfigError) as exc:
        load_settings(argv, env)
    assert fragment in str(exc.value) and "\n" not in str(exc.value)


def test_settings_never_show_secrets():
    s = load_settings([], {"OPENAI_API_KEY": "sk-secret-static-1234"})
    assert "sk-secret" not in repr(s) and "sk-secret" not in str(s.public_dict())
    assert load_settings([], s.to_env()).openai_api_key == "sk-secret-static-1234"  # workers get it


# ------------------------------------------------------------------ credentials

CREDS = [
    # headers, static env, expected (key, source)
    ({"authorization": "Bearer sk-bearer-1"}, {}, ("sk-bearer-1", "bearer")),
    ({"authorization": "bearer   sk-bearer-1 "}, {}, ("sk-bearer-1", "bearer")),
    ({"x-api-key": "sk-x-1"}, {}, ("sk-x-1", "x-api-key")),
    ({"x-api-key": "sk-x-1", "authorization": "Bearer sk-b-1"}, {}, ("sk-b-1", "bearer")),
    ({"authorization": "Basic dXNlcjpw"}, {"OPENAI_API_KEY": "sk-static"}, ("sk-static", "static")),
    ({}, {"OPENAI_API_KEY": "sk-static"}, ("sk-static", "static")),
    ({"authorization": "Bearer "}, {"OPENAI_API_KEY": "sk-static"}, ("sk-static", "static")),
]


@pytest.mark.parametrize("headers,env,expected", CREDS)
def test_credential_choice(headers, env, expected):
    s = settings(**env)
    cred = credentials.resolve(headers, Router(s).resolve("claude-sonnet-4-5"), s)
    assert (cred.key, cred.source) == expected
    assert cred.key_id and cred.key not in cred.key_id


def test_credential_per_provider_static_keys_and_401():
    s = settings(ANTHROPIC_API_KEY="sk-ant-static", GEMINI_API_KEY="AIza-static", USE_VERTEX_AUTH="true")
    r = Router(s)
    assert credentials.resolve({}, r.resolve("anthropic/claude-x"), s).key == "sk-ant-static"
    assert credentials.resolve({}, r.resolve("gemini/gemini-2.5-pro"), s).key == "AIza-static"
    assert credentials.resolve({}, r.resolve("vertex_ai/gemini-2.5-pro"), s).key is None  # cloud identity
    assert credentials.resolve({"authorization": "Bearer sk-u"}, r.resolve("vertex_ai/gemini"), s).key is None
    with pytest.raises(Exception) as exc:
        credentials.resolve({}, r.resolve("claude-sonnet-4-5"), s)  # no OPENAI_API_KEY
    assert exc.value.status == 401 and exc.value.type == "authentication_error"


def test_fingerprint_prefers_forwarded_key_id():
    s = settings()
    t = Router(s).resolve("claude-sonnet-4-5")
    cred = credentials.resolve({"authorization": "Bearer sk-abc", "x-authz-key-id": "0123abcd"}, t, s)
    assert cred.key_id == "0123abcd"
    cred = credentials.resolve({"authorization": "Bearer sk-abc"}, t, s)
    assert cred.key_id == credentials.fingerprint("sk-abc") and len(cred.key_id) == 16


# ------------------------------------------------------------------ upstream error mapping

ERRORS = [
    (400, "bad", 400, "invalid_request_error"),
    (401, "bad key", 401, "authentication_error"),
    (403, "no", 403, "permission_error"),
    (404, "no model", 404, "not_found_error"),
    (408, "slow", 504, "api_error"),
    (409, "conflict", 409, "invalid_request_error"),
    (413, "big", 413, "request_too_large"),
    (422, "unprocessable", 400, "invalid_request_error"),
    (429, "slow down", 429, "rate_limit_error"),
    (500, "boom", 500, "api_error"),
    (501, "nope", 502, "api_error"),
    (502, "bad gw", 502, "api_error"),
    (503, "unavailable", 503, "api_error"),
    (503, "model is overloaded", 529, "overloaded_error"),
    (504, "gw timeout", 504, "api_error"),
    (529, "Overloaded", 529, "overloaded_error"),
]


@pytest.mark.parametrize("status,message,out_status,out_type", ERRORS)
def test_upstream_error_table(status, message, out_status, out_type):
    err = upstream_error(status, message, provider="openai", headers={"Retry-After": "5", "x-other": "1"})
    assert (err.status, err.type) == (out_status, out_type)
    assert err.headers == {"retry-after": "5"}
    assert message.split()[0] in err.message


@pytest.mark.parametrize("value,passed", [
    ("5", "5"),
    (" 120 ", "120"),
    ("Wed, 21 Oct 2026 07:28:00 GMT", "Wed, 21 Oct 2026 07:28:00 GMT"),
    ("sk-user-key-0001", None),  # a key (or anything else) in the header is never passed on
    ("5; sk-user-key-0001", None),
    ("-1", None),
    ("1.5", None),
    ("soon", None),
    ("", None),
])
def test_retry_after_is_passed_only_as_delta_seconds_or_http_date(value, passed):
    err = upstream_error(429, "slow down", provider="openai", headers={"Retry-After": value})
    assert err.headers.get("retry-after") == passed


@pytest.mark.parametrize("text", [
    "Incorrect API key provided: CUSTOM+USERSECRET/KEY-0001",  # upper-cased by the upstream
    "key=custom%2Busersecret%2Fkey-0001 rejected",  # URL-encoded
    "in a form: custom%2busersecret%2fkey-0001",  # lower-case escapes
    "as query: custom+usersecret%2Fkey-0001",
])
def test_scrub_covers_letter_case_and_url_encoding(text):
    out = scrub(text, ["custom+usersecret/key-0001"])  # no key-shaped prefix: only the exact-key rule applies
    assert "usersecret" not in out.lower() and "[redacted]" in out, out


@pytest.mark.parametrize("text,secret", [
    ("Incorrect API key provided: sk-proj-abcdefghijklmnop", "sk-proj-abcdefghijklmnop"),
    ("key AIzaSyA1234567890abcdefghijklmnopq invalid", "AIzaSyA1234567890abcdefghijklmnopq"),
    ("header was Bearer abc.def.ghi-jkl", "abc.def.ghi-jkl"),
    ("custom-format-key-without-prefix rejected", "custom-format-key-without-prefix"),
])
def test_scrub_removes_keys(text, secret):
    out = scrub(text, ["custom-format-key-without-prefix"])
    assert secret not in out and "[redacted]" in out


@pytest.mark.parametrize(
    "rule_api, requested, backend",
    [
        (None, "openai/gpt-5-codex", "responses"),  # OpenAI serves it only on the Responses API
        (None, "openai/o3-pro", "responses"),
        (None, "openai/gpt-4.1", "openai"),
        (None, "litellm_proxy/gpt-5-codex", "openai"),  # a gateway does its own bridging
        ("responses", "claude-x", "responses"),
        ("chat_completions", "claude-codex", "openai"),
    ],
)
def test_responses_api_by_rule_or_by_default(tmp_path, rule_api, requested, backend):
    f = tmp_path / "routes.yaml"
    rules = ""
    if rule_api:
        target = "openai/gpt-4.1" if rule_api == "responses" else "openai/gpt-5-codex"
        rules = f"rules:\n  - match: {requested}\n    target: {target}\n    api: {rule_api}\n"
    f.write_text("version: 1\n" + rules)
    r = Router(settings(TRANSLATOR_ROUTES=str(f)), load_routes(str(f)))
    assert r.resolve(requested).backend == backend


def test_unknown_api_in_a_rule_is_a_config_error(tmp_path):
    f = tmp_path / "routes.yaml"
    f.write_text("rules:\n  - match: x\n    target: openai/gpt-4.1\n    api: assistants\n")
    with pytest.raises(ConfigError) as exc:
        load_routes(str(f))
    assert "api" in str(exc.value)
