-- A transition of a record in progress, made only while the caller's lease token still
-- matches: a holder whose lease expired can never touch the next holder's record.
-- KEYS[1]: the record. ARGV[1]: the lease token (16 bytes). ARGV[2]: the operation:
--   'complete', ARGV[3] the result, ARGV[4] the TTL in milliseconds;
--   'release';
--   'extend', ARGV[3] the new lease in milliseconds.
-- Returns 1 done, 0 lease lost.
local record = redis.call('GET', KEYS[1])
if not (record and string.len(record) == 50 and string.sub(record, 1, 2) == '\1P'
    and string.sub(record, 35, 50) == ARGV[1]) then
  return 0
end
local operation = ARGV[2]
if operation == 'complete' then
  redis.call('SET', KEYS[1], '\1C' .. string.sub(record, 3, 34) .. ARGV[3], 'PX', ARGV[4])
elseif operation == 'release' then
  redis.call('DEL', KEYS[1])
elseif operation == 'extend' then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
  return redis.error_reply('unknown operation ' .. operation)
end
return 1
