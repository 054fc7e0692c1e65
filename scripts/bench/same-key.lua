-- wrk script: POST /payments with a JSON body and one fixed Idempotency-Key, so that behind
-- the layer every request after the first is a replay of the stored response.
--
--   wrk -t1 -c32 -d10s -s scripts/bench/same-key.lua http://127.0.0.1:3002/payments -- KEY
--
-- The key is the first script argument (default "bench-same-key"). Send it once before the
-- run (run.sh does) so that the 32 connections do not race the first execution and get 409.
-- With the argument "--no-key" no Idempotency-Key header is sent at all: the same request,
-- which the layer passes through untouched. The request is built once per thread (no
-- request() function), so the client side costs the same with and without the key.

wrk.method = "POST"
wrk.body = '{"amount":1000,"currency":"EUR"}'
wrk.headers["Content-Type"] = "application/json"

function init(args)
   local key = args[1] or "bench-same-key"
   if key ~= "--no-key" then
      wrk.headers["Idempotency-Key"] = key
   end
end
