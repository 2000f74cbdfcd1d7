-- wrk script: POST JSON and print one JSON line of results at the end.
-- BODY_FILE: the same body every request. BODIES_FILE: one JSON body per line, each request
-- picking one at random (another user or item each time), posted to ROUTE (default: the URL's path).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bodies_file = os.getenv("BODIES_FILE")
if bodies_file then
  local bodies = {}
  for line in io.lines(bodies_file) do
    bodies[#bodies + 1] = line
  end
  local route = os.getenv("ROUTE")

  function setup(thread)
    thread:set("seed", math.random(1, 1000000))
  end

  function init(args)
    math.randomseed(seed or 1)
  end

  function request()
    return wrk.format(nil, route, nil, bodies[math.random(#bodies)])
  end
else
  local f = assert(io.open(os.getenv("BODY_FILE"), "r"))
  wrk.body = f:read("*a")
  f:close()
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "rps": %.2f, "p50_ms": %.2f, "p95_ms": %.2f, "p99_ms": %.2f, "max_ms": %.2f, "errors": %d}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    e.connect + e.read + e.write + e.status + e.timeout))
end
