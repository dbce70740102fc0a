-- Asks for a path picked at random from a file of paths (one per line) on every request,
-- with the same seed in every run, so each peer gets the same sequence of names.
-- The file is wrk's first script argument: wrk ... -s THIS URL -- NAMES_FILE.
-- The harness appends wrk_summary.lua to this script (wrk takes one script).
local paths = {}

init = function(args)
  for line in io.lines(args[1]) do
    if #line > 0 then paths[#paths + 1] = line end
  end
  math.randomseed(20240605)
end

request = function()
  return wrk.format("GET", paths[math.random(#paths)])
end
