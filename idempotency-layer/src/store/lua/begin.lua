-- Claim-or-read, atomically. KEYS[1]: the record.
-- ARGV[1]: the request fingerprint (32 bytes); ARGV[2]: the in-progress record to create;
-- ARGV[3]: the lease, in milliseconds.
-- Returns {0} acquired, {1, pttl} in progress, {2, record} completed, {3} mismatch, {4} corrupt.
local record = redis.call('GET', KEYS[1])
if not record then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return {0}
end
if string.byte(record, 1) ~= 1 or string.len(record) < 50 then
  return {4}
end
if string.sub(record, 3, 34) ~= ARGV[1] then
  return {3}
end
local state = string.sub(record, 2, 2)
if state == 'P' then
  return {1, redis.call('PTTL', KEYS[1])}
elseif state == 'C' then
  return {2, record}
end
return {4}
