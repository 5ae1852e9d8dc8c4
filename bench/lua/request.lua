-- wrk script for the keyrelay bench: one request shape per run, configured through the environment
-- (wrk runs this file once per thread, so the setup below applies to every connection).
--   BENCH_METHOD     GET | POST (default POST)
--   BENCH_PATH       request path (default: the path of the URL)
--   BENCH_BODY_FILE  file whose bytes are the request body
--   BENCH_HEADERS    header lines, "name: value" separated by "\n"
-- `done` prints one line "BENCH_JSON {...}" with the request count, errors and latency percentiles (us).

wrk.method = os.getenv("BENCH_METHOD") or "POST"
local path = os.getenv("BENCH_PATH")
if path and path ~= "" then wrk.path = path end

local body_file = os.getenv("BENCH_BODY_FILE")
if body_file and body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  wrk.body = f:read("*a")
  f:close()
end

local headers = os.getenv("BENCH_HEADERS") or ""
for line in string.gmatch(headers, "[^\n]+") do
  local name, value = string.match(line, "^%s*([^:]+):%s*(.-)%s*$")
  if name then wrk.headers[name] = value end
end

function done(summary, latency, requests)
  local e = summary.errors
  local parts = {
    string.format('"requests":%d', summary.requests),
    string.format('"duration_us":%d', summary.duration),
    string.format('"bytes":%d', summary.bytes),
    string.format('"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}',
                  e.connect, e.read, e.write, e.status, e.timeout),
    string.format('"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}',
                  latency.min, latency.mean, latency.stdev, latency.max,
                  latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)),
  }
  io.write("BENCH_JSON {" .. table.concat(parts, ",") .. "}\n")
end
