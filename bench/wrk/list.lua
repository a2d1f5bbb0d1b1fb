-- GET /v1/sessions?directory=…&limit=50, cycling through the directories listed in the
-- DIRECTORIES environment variable (space-separated; URL-safe paths).
-- Usage: DIRECTORIES="/home/ana/api /home/bo/web" wrk -t2 -c32 -d20s --latency -s bench/wrk/list.lua URL
local dirs = {}
for d in string.gmatch(os.getenv("DIRECTORIES") or "", "%S+") do
  table.insert(dirs, d)
end
local counter = 0

request = function()
  counter = counter + 1
  local dir = dirs[(counter % #dirs) + 1]
  return wrk.format("GET", "/v1/sessions?directory=" .. dir .. "&limit=50")
end
