-- wrk script: POST /payments with a JSON body and an Idempotency-Key unique per request, so
-- that every request behind the layer is a first execution (claim, run, store).
--
--   wrk -t1 -c32 -d10s -s scripts/bench/unique-keys.lua http://127.0.0.1:3002/payments -- RUNID
--
-- Keys are "<RUNID>-<thread>-<counter>". Pass a RUNID unique per wrk invocation (run.sh does)
-- so that a later run against the same server does not replay an earlier run's keys; without
-- one, the time and a random number stand in for it.

wrk.method = "POST"
wrk.body = '{"amount":1000,"currency":"EUR"}'
wrk.headers["Content-Type"] = "application/json"

local threads = 0

function setup(thread)
   thread:set("tid", threads)
   threads = threads + 1
end

local prefix
local counter = 0

function init(args)
   local run = args[1]
   if run == nil then
      math.randomseed(os.time())
      run = os.time() .. "." .. math.random(1, 1e9)
   end
   prefix = run .. "-" .. tostring(tid or 0) .. "-"
end

function request()
   counter = counter + 1
   wrk.headers["Idempotency-Key"] = prefix .. counter
   return wrk.format()
end
