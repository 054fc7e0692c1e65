-- A transition of a record in progress, made only while the caller's lease token still
-- matches: a holder whose lease expired can never touch the next holder's record.
-- KEYS[1]: the record. ARGV[1]: the lease token (16 bytes). ARGV[2]: the operation:
--   'complete', ARGV[3] the result, ARGV[4] the TTL in milliseconds;
--   'release';
--   'extend', ARGV[3] the new lease in milliseconds.
-- Returns 1 done, 0 lease lost.
local record = redis.call('GET', KEYS[1])
if not (record and string.len(record) >= 50 and string.byte(record, 1) == 1
    and string.sub(record, 35, 50) == ARGV[1]) then
  return 0
end
local operation = ARGV[2]
local state = string.sub(record, 2, 2)
if state == 'C' then
  -- Completed by this very holder: a completion retried after its reply was lost is done.
  -- It still writes (the TTL again), so that a WAIT after it, perhaps on a new connection,
  -- waits for a write that replicas must acknowledge rather than returning at once.
  if operation == 'complete' then
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
    return 1
  end
  return 0
end
if state ~= 'P' or string.len(record) ~= 50 then
  return 0
end
if operation == 'complete' then
  -- The completed record keeps the fingerprint and the token, then the result.
  redis.call('SET', KEYS[1], '\1C' .. string.sub(record, 3, 50) .. ARGV[3], 'PX', ARGV[4])
elseif operation == 'release' then
  redis.call('DEL', KEYS[1])
elseif operation == 'extend' then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
  return redis.error_reply('unknown operation ' .. operation)
end
return 1
