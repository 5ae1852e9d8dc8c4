"""Model routing (pure): the Claude-facing model name a client asks for -> the backend that serves it.

Order of resolution for a requested name:
1. the first rule of the routing file whose `match` equals the name or matches it as a glob;
2. a provider prefix in the name itself (`openai/gpt-4.1`, `gemini/gemini-2.5-pro`, `anthropic/...`);
3. PREFERRED_PROVIDER=anthropic: the name unchanged on the Anthropic backend (the original proxy's behaviour);
4. a Claude family name: haiku -> SMALL_MODEL, sonnet and opus -> BIG_MODEL;
5. otherwise the name as it is.
The resulting model spec is then split into provider and model: an explicit prefix wins; unprefixed
`gemini-*` names go to Gemini (Vertex AI when USE_VERTEX_AUTH), unprefixed `claude-*` names to Anthropic when
it is the preferred provider, everything else to the OpenAI-compatible backend (OPENAI_BASE_URL).

The provider set is closed: a name the client chose reaches only a provider the operator enabled
(`enabled_providers`: the OpenAI-compatible backend, the providers the settings configure, those named by the
routing file's targets and BIG_MODEL/SMALL_MODEL, and TRANSLATOR_PROVIDERS). Any other provider prefix is a 400
naming the model, decided here, before any connection, LiteLLM import or credential lookup; an unprefixed
`gemini-*` name goes to Gemini only when Gemini is enabled (otherwise to the OpenAI-compatible backend as-is).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from translator.errors import ApiError
from translator.settings import ConfigError, Settings

# The kind of backend that serves a target: which implementation in `translator.backends` handles it.
BackendKind = Literal["openai", "anthropic", "litellm"]
KeyMode = Literal["required", "optional", "none"]

# Providers served by our own lean OpenAI-compatible client.
OPENAI_NATIVE = frozenset({"openai", "litellm_proxy"})
# Providers LiteLLM serves for us (their auth and wire formats); the name before `/` in a model spec.
LITELLM_PROVIDERS = frozenset({
    "gemini", "vertex_ai", "vertex_ai_beta", "bedrock", "bedrock_converse", "sagemaker", "azure", "azure_ai",
    "mistral", "groq", "deepseek", "openrouter", "xai", "cohere", "cohere_chat", "together_ai", "fireworks_ai",
    "hosted_vllm", "vllm", "ollama", "ollama_chat", "huggingface", "perplexity", "cerebras", "sambanova",
    "watsonx", "databricks", "nvidia_nim", "deepinfra", "anyscale", "replicate", "moonshot", "dashscope",
    "github", "lm_studio", "nscale", "novita", "featherless_ai", "nebius", "volcengine", "zai",
})
# Providers whose credential is not an API key (cloud identity): the bearer credential is not forwarded.
NO_KEY_PROVIDERS = frozenset({"vertex_ai", "vertex_ai_beta", "bedrock", "bedrock_converse", "sagemaker"})
# Providers where a key is optional (local servers).
OPTIONAL_KEY_PROVIDERS = frozenset({"ollama", "ollama_chat", "lm_studio", "hosted_vllm", "vllm"})

# Claude-facing names listed by GET /v1/models when the routing file does not list its own.
DEFAULT_CLAUDE_MODELS = (
    ("claude-opus-4-5", "Claude Opus 4.5"),
    ("claude-opus-4-1", "Claude Opus 4.1"),
    ("claude-sonnet-4-5", "Claude Sonnet 4.5"),
    ("claude-sonnet-4-0", "Claude Sonnet 4"),
    ("claude-haiku-4-5", "Claude Haiku 4.5"),
    ("claude-3-5-haiku-latest", "Claude Haiku 3.5"),
)


@dataclass(frozen=True)
class Target:
    """Where a request goes. `model` is what the upstream sees: the bare model name on the native
    paths, the full LiteLLM model string (`gemini/gemini-2.5-pro`) on the LiteLLM path."""

    backend: BackendKind
    provider: str
    model: str
    base_url: str | None = None
    caps: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    key_mode: KeyMode = "required"
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # LiteLLM kwargs
    rule: str = "default"  # which rule decided, for logs


class RuleModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    match: str = Field(min_length=1)
    target: str = Field(min_length=1)
    base_url: str | None = None
    caps: dict[str, Any] = Field(default_factory=dict)


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    display_name: str | None = None


class RoutesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Literal[1] = 1
    models: list[ModelEntry | str] | None = None
    rules: list[RuleModel] = Field(default_factory=list)


KNOWN_PROVIDERS = OPENAI_NATIVE | {"anthropic"} | LITELLM_PROVIDERS


def enabled_providers(settings: Settings, routes: "RoutesFile") -> frozenset[str]:
    """The providers a client's model name may reach (see the module docstring)."""
    s = settings
    out = set(OPENAI_NATIVE)
    if (s.preferred_provider == "anthropic" or s.anthropic_api_key
            or s.anthropic_base_url != Settings.anthropic_base_url):
        out.add("anthropic")
    if s.gemini_api_key or s.gemini_base_url:
        out.add("gemini")
    if s.preferred_provider == "google":
        out.add("vertex_ai" if s.use_vertex_auth else "gemini")
    if s.use_vertex_auth:
        out.update(("vertex_ai", "vertex_ai_beta"))
    for spec in [s.big_model, s.small_model] + [r.target for r in routes.rules]:
        provider, model = split_spec(spec)
        if provider is None and model.startswith("gemini-"):
            provider = "vertex_ai" if s.use_vertex_auth else "gemini"
        if provider is not None:
            out.add(provider)
    for name in filter(None, s.providers.split(",")):
        if name not in KNOWN_PROVIDERS:
            raise ConfigError(f"TRANSLATOR_PROVIDERS: unknown provider {name!r}")
        out.add(name)
    return frozenset(out)


def split_spec(spec: str) -> tuple[str | None, str]:
    """`provider/model` -> (provider, model) when the prefix is a known provider, else (None, spec)."""
    prefix, sep, rest = spec.partition("/")
    if sep and rest and (prefix in OPENAI_NATIVE or prefix == "anthropic" or prefix in LITELLM_PROVIDERS):
        return prefix, rest
    return None, spec


_MEMO_SIZE = 1024


class Router:
    def __init__(self, settings: Settings, routes: RoutesFile | None = None) -> None:
        self.settings = settings
        self.routes = routes or RoutesFile()
        for rule in self.routes.rules:
            if rule.base_url is not None and not rule.base_url.startswith(("http://", "https://")):
                raise ConfigError(f"routing rule {rule.match!r}: base_url must be an http(s) URL")
        self._resolved: dict[str, Target] = {}
        self.enabled = enabled_providers(settings, self.routes)

    # -- public
    def resolve(self, requested: str) -> Target:
        """The target for a requested model name (memoized: the answer depends only on the name and the
        configuration; at most `_MEMO_SIZE` names are kept, since clients choose them)."""
        hit = self._resolved.get(requested)
        if hit is None:
            hit = self._resolve(requested)
            if len(self._resolved) < _MEMO_SIZE:
                self._resolved[requested] = hit
        return hit

    def _resolve(self, requested: str) -> Target:
        for rule in self.routes.rules:
            if rule.match == requested or fnmatch.fnmatchcase(requested, rule.match):
                return self._target(rule.target, base_url=rule.base_url, caps=rule.caps, rule=f"rule:{rule.match}")
        s = self.settings
        provider, _ = split_spec(requested)
        if provider is not None:
            if provider not in self.enabled:
                shown = requested if len(requested) <= 200 else requested[:200] + "..."
                raise ApiError(400, "invalid_request_error",
                               f"model {shown!r}: provider {provider!r} is not enabled on this translator")
            return self._target(requested, rule="prefix")
        lowered = requested.lower()
        if s.preferred_provider == "anthropic":
            return self._target(f"anthropic/{requested}", rule="preferred:anthropic")
        if "haiku" in lowered:
            return self._target(s.small_model, rule="small")
        if "sonnet" in lowered or "opus" in lowered:
            return self._target(s.big_model, rule="big")
        if requested.startswith("gemini-") and not self.enabled & {"gemini", "vertex_ai"}:
            return self._target(f"openai/{requested}", rule="as-is")  # Gemini is not enabled: the default backend
        return self._target(requested, rule="as-is")

    def claude_models(self) -> list[tuple[str, str]]:
        """(id, display name) pairs for GET /v1/models."""
        if self.routes.models is not None:
            out = []
            for m in self.routes.models:
                if isinstance(m, str):
                    out.append((m, m))
                else:
                    out.append((m.id, m.display_name or m.id))
            return out
        names = list(DEFAULT_CLAUDE_MODELS)
        seen = {n for n, _ in names}
        for rule in self.routes.rules:
            if not any(ch in rule.match for ch in "*?[") and rule.match not in seen:
                names.append((rule.match, rule.match))
                seen.add(rule.match)
        return names

    def configured_models(self) -> frozenset[str]:
        """Target models named by the configuration alone: every rule's target, BIG_MODEL and SMALL_MODEL, and
        what the listed Claude model names resolve to. The usage metrics label by these (any other target model
        was chosen by a client and is counted as `other`), so their series stay bounded by the configuration."""
        s = self.settings
        specs = [r.target for r in self.routes.rules] + [s.big_model, s.small_model]
        models = {self._target(spec).model for spec in specs}
        models.update(self._resolve(name).model for name, _ in self.claude_models())
        return frozenset(models)

    def needs_litellm(self) -> bool:
        """Whether any configured default route goes through LiteLLM (to import it at startup)."""
        targets = [self.resolve("claude-haiku-4-5"), self.resolve("claude-sonnet-4-5")]
        targets += [self._target(r.target) for r in self.routes.rules]
        return any(t.backend == "litellm" for t in targets)

    # -- internals
    def _target(self, spec: str, *, base_url: str | None = None, caps: Mapping[str, Any] | None = None,
                rule: str = "default") -> Target:
        s = self.settings
        provider, model = split_spec(spec)
        if provider is None:
            if model.startswith("gemini-"):
                provider = "vertex_ai" if s.use_vertex_auth else "gemini"
            elif model.startswith("claude-") and s.preferred_provider == "anthropic":
                provider = "anthropic"
            else:
                provider = "openai"
        caps = MappingProxyType(dict(caps or {}))
        key_mode: KeyMode = ("none" if provider in NO_KEY_PROVIDERS
                             else "optional" if provider in OPTIONAL_KEY_PROVIDERS else "required")
        if provider in OPENAI_NATIVE:
            return Target("openai", provider, model, base_url or s.openai_base_url, caps, key_mode, rule=rule)
        if provider == "anthropic":
            return Target("anthropic", provider, model, base_url or s.anthropic_base_url, caps, key_mode, rule=rule)
        extra: dict[str, Any] = {}
        if provider.startswith("vertex_ai"):
            if s.vertex_project:
                extra["vertex_project"] = s.vertex_project
            if s.vertex_location:
                extra["vertex_location"] = s.vertex_location
        if provider == "gemini" and base_url is None:
            base_url = s.gemini_base_url
        return Target("litellm", provider, f"{provider}/{model}", base_url, caps, key_mode,
                      MappingProxyType(extra), rule=rule)


def load_routes(path: str) -> RoutesFile:
    """Parse and validate a routing file; ConfigError names the file and the problem in one line."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read routing file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with `version` and `rules`")
    try:
        return RoutesFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: {loc}: {first['msg']}") from None


def build_router(settings: Settings) -> Router:
    routes = load_routes(settings.routes_file) if settings.routes_file else None
    return Router(settings, routes)
