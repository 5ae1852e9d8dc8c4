"""The one definition of how budget counters live in Redis, shared by ext_authz (reads, counts requests) and
the translator (adds token usage). Reference: docs/usage.md#budgets.

Key schema (every key under KEY_PREFIX):

    keyrelay:budget:window                         minute-window length in seconds (string; ext_authz writes it
                                                   from the policy's `budgets.window_seconds`, default 60)
    keyrelay:budget:<scope>:<id>:m:<bucket>        hash for one minute window, bucket = floor(t / window)
    keyrelay:budget:<scope>:<id>:d:<bucket>        hash for one UTC day, bucket = floor(t / 86400)
    keyrelay:budget:<scope>:<id>:inflight          sorted set of requests in flight: member = x-request-id,
                                                   score = when it is forgotten (t + MAX_INFLIGHT_SECONDS)
    keyrelay:budget:<scope>:<id>:ended             sorted set of requests that ended before they were added
    keyrelay:budget:<scope>:<id>:tracked           present while the subject has a concurrent_requests budget
                                                   (ext_authz sets it; the translator records ends only then)

`<scope>` is `tenant` (id: the policy's tenant name) or `key` (id: the 16-hex x-authz-key-id fingerprint, never
a key). Hash fields: `requests` (counted by ext_authz for allowed `messages` requests) and the token kinds
`input`, `output`, `cache_read`, `cache_write` (raw counts the translator adds after each response; weights
are applied by the reader, so the writer needs no policy). `t` is Redis' own clock (TIME inside the scripts),
so replicas with skewed clocks still agree on the window. Each hash expires two windows after it starts.
The in-flight set (for `concurrent_requests` budgets) gets a member when ext_authz allows a request (at its next
refresh) and loses it when the translator finishes the request; a request that finishes before it was added
leaves its id in `<scope>:<id>:ended`, so the refresh does not add it. A member whose end was never recorded (a
crashed translator, a dropped write) is forgotten MAX_INFLIGHT_SECONDS after it was added.

Both writers go through the Lua scripts below: one round trip per batch, and the bucket arithmetic exists once.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

KEY_PREFIX = "keyrelay:budget"
WINDOW_KEY = f"{KEY_PREFIX}:window"
DEFAULT_WINDOW_SECONDS = 60
DAY_SECONDS = 86400
SCOPES = ("tenant", "key")
TOKEN_FIELDS = ("input", "output", "cache_read", "cache_write")
FIELDS = ("requests", *TOKEN_FIELDS)
# Ids as ext_authz produces them (policy tenant names; key fingerprints). Anything else is not written.
TENANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}$")
KEY_ID = re.compile(r"^[0-9a-f]{16}$")
# Request ids tracked in the in-flight sets (Envoy's x-request-id is a UUID); others are not tracked.
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_INFLIGHT_SECONDS = 900
# Seconds a Redis command may take before the caller treats the store as unreachable.
DEFAULT_SOCKET_TIMEOUT = 0.5
# Environment variable (and `--redis-url` flag) naming the budget store, on both services.
REDIS_URL_ENV = "KEYRELAY_REDIS_URL"


def valid_id(scope: str, ident: str | None) -> bool:
    if not ident:
        return False
    if scope == "tenant":
        return TENANT_ID.match(ident) is not None
    return scope == "key" and KEY_ID.match(ident) is not None


def trackable_request_id(rid: str | None) -> bool:
    return bool(rid) and REQUEST_ID.match(rid) is not None  # type: ignore[arg-type]


def window_key(scope: str, ident: str, window: str, bucket: int) -> str:
    """The hash of one window (`window` is "m" or "d"); the scripts build the same string."""
    return f"{KEY_PREFIX}:{scope}:{ident}:{window}:{bucket}"


def redact_url(url: str) -> str:
    """The Redis URL for logs and errors: any password (or user:password) replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable redis url>"
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def check_url(url: str) -> str:
    """A usable redis:// / rediss:// / unix:// URL, else ValueError (the message never holds the password)."""
    try:
        scheme = urlsplit(url).scheme
    except ValueError:
        scheme = ""
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"the Redis URL must start with redis://, rediss:// or unix://, got {redact_url(url)!r}")
    return url


# Shared Lua: the current bucket numbers from Redis' clock and the minute window length.
_CLOCK = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local w = tonumber(redis.call('GET', KEYS[1]) or '') or %d
local mb = math.floor(t / w)
local db = math.floor(t / %d)
""" % (DEFAULT_WINDOW_SECONDS, DAY_SECONDS)

# ARGV: repeated groups of (scope, id, input, output, cache_read, cache_write, k, then k request ids). Adds the
# counts to the minute and day hashes of each subject and removes the finished requests from its in-flight set.
ADD_USAGE = _CLOCK + """
local p = '%s:'
local f = {'input', 'output', 'cache_read', 'cache_write'}
local i = 1
while i <= #ARGV do
  local base = p .. ARGV[i] .. ':' .. ARGV[i + 1]
  local mk = base .. ':m:' .. mb
  local dk = base .. ':d:' .. db
  local any = false
  for j = 1, 4 do
    local n = tonumber(ARGV[i + 1 + j])
    if n > 0 then
      redis.call('HINCRBY', mk, f[j], n)
      redis.call('HINCRBY', dk, f[j], n)
      any = true
    end
  end
  if any then
    redis.call('EXPIRE', mk, 2 * w)
    redis.call('EXPIRE', dk, 2 * %d)
  end
  local k = tonumber(ARGV[i + 6])
  if k > 0 and redis.call('EXISTS', base .. ':tracked') == 1 then
    for j = 1, k do
      -- A request that ends before ext_authz's refresh added it leaves a note, so it is never added.
      if redis.call('ZREM', base .. ':inflight', ARGV[i + 6 + j]) == 0 then
        redis.call('ZADD', base .. ':ended', t + %d, ARGV[i + 6 + j])
        redis.call('EXPIRE', base .. ':ended', %d)
      end
    end
  end
  i = i + 7 + k
end
return 0
""" % (KEY_PREFIX, DAY_SECONDS, MAX_INFLIGHT_SECONDS, MAX_INFLIGHT_SECONDS)

# ARGV[1]: the minute window length to publish; then repeated groups of (scope, id, requests to add, 1 when the
# subject has a concurrent_requests budget else 0, k, then k request ids now in flight). Adds the requests and the in-flight members, forgets expired members, then returns
# {seconds, microseconds, window, then per subject the minute hash's five fields, the day hash's five fields
# (FIELDS order, false for absent) and the number of requests in flight}.
REFRESH = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local w = tonumber(ARGV[1])
redis.call('SET', KEYS[1], w)
local mb = math.floor(t / w)
local db = math.floor(t / %d)
local p = '%s:'
local out = {now[1], now[2], w}
local i = 2
while i <= #ARGV do
  local base = p .. ARGV[i] .. ':' .. ARGV[i + 1]
  local mk = base .. ':m:' .. mb
  local dk = base .. ':d:' .. db
  local fk = base .. ':inflight'
  local ek = base .. ':ended'
  local n = tonumber(ARGV[i + 2])
  if n > 0 then
    redis.call('HINCRBY', mk, 'requests', n)
    redis.call('HINCRBY', dk, 'requests', n)
    redis.call('EXPIRE', mk, 2 * w)
    redis.call('EXPIRE', dk, 2 * %d)
  end
  if ARGV[i + 3] == '1' then  -- a concurrent_requests budget: the translator records this subject's ends
    redis.call('SET', base .. ':tracked', 1, 'EX', %d)
  end
  local k = tonumber(ARGV[i + 4])
  for j = 1, k do
    if redis.call('ZREM', ek, ARGV[i + 4 + j]) == 0 then  -- not already finished
      redis.call('ZADD', fk, t + %d, ARGV[i + 4 + j])
    end
  end
  if k > 0 then
    redis.call('EXPIRE', fk, %d)
    redis.call('ZREMRANGEBYSCORE', ek, '-inf', t)
  end
  redis.call('ZREMRANGEBYSCORE', fk, '-inf', t)
  for _, v in ipairs(redis.call('HMGET', mk, 'requests', 'input', 'output', 'cache_read', 'cache_write')) do
    out[#out + 1] = v
  end
  for _, v in ipairs(redis.call('HMGET', dk, 'requests', 'input', 'output', 'cache_read', 'cache_write')) do
    out[#out + 1] = v
  end
  out[#out + 1] = redis.call('ZCARD', fk)
  i = i + 5 + k
end
return out
""" % (DAY_SECONDS, KEY_PREFIX, DAY_SECONDS, MAX_INFLIGHT_SECONDS, MAX_INFLIGHT_SECONDS, MAX_INFLIGHT_SECONDS)
