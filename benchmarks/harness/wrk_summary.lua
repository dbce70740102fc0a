-- Prints wrk's exact totals as one JSON line after its own report, so the harness reads
-- bytes, request counts and latency percentiles without parsing rounded human units.
-- Latencies are in microseconds; bytes include response headers and partial bodies.
-- A script that defines summary_extra() (wrk_long_tail.lua) has its line printed after it.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_SUMMARY {"duration_us": %d, "requests": %d, "bytes": %d, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, ' ..
    '"status_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
  if summary_extra then io.write(summary_extra()) end
end
