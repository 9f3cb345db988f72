-- wrk script used by bench/proxy.sh: at the end of a run, print one
-- machine-readable line with exact percentiles (microseconds) and errors.
-- With WRK_METHOD=POST, every request carries the file WRK_BODY_FILE as body.
local method = os.getenv("WRK_METHOD") or "GET"
if method == "POST" then
  local f = assert(io.open(os.getenv("WRK_BODY_FILE"), "rb"))
  wrk.method = "POST"
  wrk.body = f:read("*a")
  wrk.headers["Content-Type"] = "application/octet-stream"
  f:close()
end
done = function(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    "BENCH requests=%.0f duration_us=%.0f bytes=%.0f rps=%.2f"
      .. " mean_us=%.1f p50_us=%.0f p90_us=%.0f p99_us=%.0f p999_us=%.0f max_us=%.0f"
      .. " err_connect=%.0f err_read=%.0f err_write=%.0f err_status=%.0f err_timeout=%.0f\n",
    summary.requests, summary.duration, summary.bytes, summary.requests / secs,
    latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
