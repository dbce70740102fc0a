-- Counts the responses of each status in the global table ``statuses`` (wrk_long_tail.lua
-- prints it). Defining response() makes wrk hand every response to Lua, so this part is
-- only appended to warm-up runs.
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
