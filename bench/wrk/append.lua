-- POST a message to one of the sessions listed in the SESSIONS environment variable
-- (space-separated ids), round-robin per connection.
-- Usage: SESSIONS="ses_a ses_b" wrk -t2 -c32 -d20s -s bench/wrk/append.lua http://127.0.0.1:4096
local ids = {}
for id in string.gmatch(os.getenv("SESSIONS") or "", "%S+") do
  table.insert(ids, id)
end
local counter = 0
local body = '{"role":"user","parts":[{"type":"text","text":"Why does the login fail when the session token expired after the deploy?"}],"metadata":{"client":"wrk"}}'

request = function()
  counter = counter + 1
  local id = ids[(counter % #ids) + 1]
  return wrk.format("POST", "/v1/sessions/" .. id .. "/messages",
    { ["Content-Type"] = "application/json" }, body)
end

done = function(summary, latency, requests)
  io.write(string.format("non-2xx or socket errors: %d\n",
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
