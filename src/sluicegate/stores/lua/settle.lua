-- settle.lua: reconcile one reservation (tokens actual - reserved; release concurrency slots).
--
-- KEYS[1]      reservation record key (string written by apply.lua: settled flag, reserved,
--              expiry, local adjustments, foreign adjustments; one per line)
-- ARGV[1]      now override ('' = Redis TIME - EPOCH)
-- ARGV[2]      key TTL slack in ms
-- ARGV[3]      actual tokens used
--
-- The local adjustments name bucket keys in KEYS[1]'s hash slot that are not declared in KEYS
-- (they are only known once the record is read); Redis allows that in standalone mode and, in a
-- cluster, for keys of the same slot. Foreign adjustments (other slots: shared pools) are
-- returned for the client to apply with adjust.lua.
--
-- Returns {status (0 applied, 1 duplicate, 2 unknown), delta, foreign adjustments JSON}.

local now = read_now(ARGV[1])
local slack = tonumber(ARGV[2])
local actual = tonumber(ARGV[3])
local v = redis.call('GET', KEYS[1])
if not v then
  return {2, '0', '[]'}
end
local flag, reserved, expires, local_json, foreign_json =
  string.match(v, '^(%d)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n(.*)$')
if (not flag) or tonumber(expires) <= now then
  return {2, '0', '[]'}
end
if flag == '1' then
  return {1, '0', '[]'}
end
redis.call('SETRANGE', KEYS[1], 0, '1')  -- settled; keeps the TTL
local delta = actual - tonumber(reserved)
local entries = cjson.decode(local_json)
for i = 1, #entries, 4 do
  local kind = entries[i]
  local amount = delta
  if kind == 'c' then
    amount = tonumber(entries[i + 3])
  end
  if kind == 'c' or delta ~= 0 then
    adjust(kind, entries[i + 1], entries[i + 2], tonumber(entries[i + 3]), amount, now, slack)
  end
end
return {0, fmt(delta), foreign_json}
