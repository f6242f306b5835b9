-- wrk script for chatd's benchmark (bench/run.py): POST one JSON body, report one JSON line.
--
-- The body comes from $BENCH_BODY, so one script serves every target. No
-- request() or response() function: wrk then sends a prebuilt request and
-- never hands responses to Lua, which keeps its own cost per request minimal.

local body = os.getenv("BENCH_BODY")
assert(body and #body > 0, "post.lua: set BENCH_BODY to the JSON body to POST")

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"

-- One line run.py picks out of wrk's output. Latencies in microseconds;
-- errors.status counts answers with a status above 399.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d, "status": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.timeout, e.status))
end
