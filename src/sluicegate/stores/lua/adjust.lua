-- adjust.lua: apply after-the-fact adjustments to buckets of one hash slot.
--
-- Used for the parts of a settlement that live in another slot than the reservation record
-- (shared pools in Redis Cluster), and to compensate the slots a multi-slot decision already
-- consumed when a later slot refuses. A compensation names the value apply.lua wrote and the
-- value before it: if the key still holds what was written (nobody touched it since), the prior
-- value is restored exactly; otherwise the cost is refunded arithmetically (gcra_adjust with a
-- negative delta, clamped so a bucket never overfills; window counts decremented; slots freed).
--
-- KEYS[1..n]   bucket keys
-- ARGV[1]      now override ('' = Redis TIME - EPOCH)
-- ARGV[2]      key TTL slack in ms
-- ARGV[3..]    per key, 6 values: kind ('t' token charge, 'c' concurrency release),
--              algorithm ('g', 's', 'f'; ignored for 'c'), period (ignored for 'c'), amount
--              (tokens to charge, negative = refund; or slots to release), then for an exact
--              compensation the value written and the value before ('' '' otherwise; a prior
--              of '' means the key was absent)
--
-- Returns the number of adjustments applied.

local now = read_now(ARGV[1])
local slack = tonumber(ARGV[2])
local a = 3
for i = 1, #KEYS do
  local key, kind, algo = KEYS[i], ARGV[a], ARGV[a + 1]
  local period = tonumber(ARGV[a + 2])
  local written, prior = ARGV[a + 4], ARGV[a + 5]
  if written ~= '' and redis.call('GET', key) == written then
    restore(key, kind, algo, period, prior, now, slack)
  else
    adjust(kind, key, algo, period, tonumber(ARGV[a + 3]), now, slack)
  end
  a = a + 6
end
return #KEYS
