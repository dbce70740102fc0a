-- The long-tail loads: every request names one of many files, picked by the load's mode.
--   wrk ... -s THIS URL -- MODE NAMES_FILE MISSING_FILE MISS_SHARE
--   MODE "uniform": a name of NAMES_FILE, each equally likely;
--   MODE "zipf":    line k of NAMES_FILE with probability (1/k) / H(N) (Zipf, s = 1), drawn
--                   by binary search in a cumulative table built once (N numbers);
--   MISS_SHARE:     that fraction of requests (0 to 1) instead names a line of MISSING_FILE,
--                   uniformly (names no mount has: old links to deleted files).
-- The same seed in every run, so each server gets the same sequence of names. Memory is
-- bounded by the two files (one string per line) and the table (one number per name).
-- wrk_summary.lua (appended by the harness) prints how many requests named a missing file
-- as a WRK_STATUS line in done(), with the count of each response status when
-- wrk_status_counts.lua is appended too (the warm-up: wrk passes every response's headers
-- and body to Lua then, which costs wrk about 9 µs a response here, so measured runs go
-- without it and are checked by wrk's own count of statuses >= 400).
local paths, missing, cdf = {}, {}, nil
local mode, miss_share = "uniform", 0
-- Globals: done() reads them from each thread with thread:get().
statuses, sent_missing = {}, 0
local threads = {}

setup = function(thread)
  threads[#threads + 1] = thread
end

local function read_lines(file, into)
  for line in io.lines(file) do
    if #line > 0 then into[#into + 1] = line end
  end
end

init = function(args)
  mode, miss_share = args[1], tonumber(args[4]) or 0
  read_lines(args[2], paths)
  if miss_share > 0 then read_lines(args[3], missing) end
  if mode == "zipf" then
    cdf = {}
    local total = 0
    for k = 1, #paths do
      total = total + 1 / k
      cdf[k] = total
    end
    for k = 1, #paths do cdf[k] = cdf[k] / total end
  elseif mode ~= "uniform" then
    error("unknown mode " .. tostring(mode))
  end
  math.randomseed(20261207)
end

-- The smallest k with cdf[k] >= u: at most log2(N) + 1 steps.
local function zipf_rank(u)
  local low, high = 1, #cdf
  while low < high do
    local middle = math.floor((low + high) / 2)
    if cdf[middle] < u then low = middle + 1 else high = middle end
  end
  return low
end

request = function()
  if miss_share > 0 and math.random() < miss_share then
    sent_missing = sent_missing + 1
    return wrk.format("GET", missing[math.random(#missing)])
  end
  if cdf then return wrk.format("GET", paths[zipf_rank(math.random())]) end
  return wrk.format("GET", paths[math.random(#paths)])
end

-- Called by wrk_summary.lua's done(): one JSON line of the threads' status counts.
summary_extra = function()
  local counts, missing_sent = {}, 0
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + count
    end
    missing_sent = missing_sent + thread:get("sent_missing")
  end
  local parts = {}
  for status, count in pairs(counts) do
    parts[#parts + 1] = string.format('"%d": %d', status, count)
  end
  return string.format('WRK_STATUS {"statuses": {%s}, "sent_missing": %d}\n',
    table.concat(parts, ", "), missing_sent)
end
