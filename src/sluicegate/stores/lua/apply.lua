-- apply.lua: check every bucket of one decision, then consume all of them or none.
--
-- KEYS[1..n]   bucket keys, one per op, in batch order (duplicates allowed: each op reads the
--              state from before this call, and the last write wins, exactly like MemoryStore)
-- KEYS[n+1]    optional: reservation record key (a string, see the end of this script), written
--              only when all ops pass
-- ARGV[1]      now override in seconds ('' = Redis TIME - EPOCH, the production clock)
-- ARGV[2]      key TTL slack in ms added to every PEXPIRE (0 in production)
-- ARGV[3]      max_delay in seconds (deferred admission; see algorithms/gcra.py)
-- ARGV[4]      mode: '0' normal; '1' dry run (compute results, write nothing: multi-slot
--              decisions use it to report the buckets after a refusing slot); '2' normal, and
--              an admitted reply also returns each op's value before and after (for an exact
--              compensation by adjust.lua if a later slot refuses)
-- ARGV[5]      n, the number of ops
-- ARGV[6..]    per op, 3 values: algorithm ('g' GCRA, 's' sliding window, 'f' fixed window,
--              'c' concurrency), period, capacity (floats as Python repr; the client caches
--              this block per set of limits)
-- then         per op, its cost
-- then, iff KEYS[n+1] is given, 4 values: reserved tokens, record ttl (s),
--              local adjustments (JSON list), foreign adjustments (JSON list; other slots)
--
-- Returns {allowed (0/1), delay, remaining[1..n] (ints), reset[1..n], retry_after[1..n]}:
-- the columns of BatchResult; floats as %.17g strings ('inf' when a cost can never fit). A
-- bucket admitted iff its retry_after is 0 (a refusing window reports at least 1e-6).
-- Mode '2', admitted: then prior[1..n], written[1..n] (raw stored values; '' = absent / not
-- written).

local now = read_now(ARGV[1])
local slack = tonumber(ARGV[2])
local max_delay = tonumber(ARGV[3])
local dry = ARGV[4] == '1'
local want_values = ARGV[4] == '2'
local n = tonumber(ARGV[5])

local out = {0, '0'}
-- pending writes as parallel arrays (no table per write): key, value, ttl, op index
local wkey, wval, wttl, wop = {}, {}, {}, {}
local nw = 0
local allowed = true
local delay = 0.0
local a = 6
local c = 6 + 3 * n
for i = 1, n do
  local key = KEYS[i]
  local algo = ARGV[a]
  local period = tonumber(ARGV[a + 1])
  local capacity = tonumber(ARGV[a + 2])
  local cost = tonumber(ARGV[c])
  a = a + 3
  c = c + 1
  local ok, remaining, reset, retry
  if algo == 'g' then
    local tat = read_tat(key)
    local new_tat, d
    ok, new_tat, d, retry, remaining, reset = gcra(tat, now, cost, period, capacity, max_delay)
    if ok then
      if new_tat ~= tat then
        nw = nw + 1
        wkey[nw], wval[nw], wttl[nw], wop[nw] = key, fmt(new_tat), ttl_ms(new_tat - now, slack), i
      end
      if d > delay then
        delay = d
      end
    end
  elseif algo == 'c' then
    local held, lease = read_held(key)
    local in_flight = 0.0
    if lease > now then
      in_flight = held
    end
    local new
    ok, new, remaining = concurrency_acquire(in_flight, cost, capacity)
    reset = 0.0
    if ok then
      retry = 0.0
      nw = nw + 1
      wkey[nw], wval[nw], wttl[nw], wop[nw] =
        key, fmt(new) .. ' ' .. fmt(now + period), ttl_ms(period, slack), i
    elseif cost > capacity then
      retry = INF
    else
      retry = 1.0
    end
  else
    local oi, op, oc = read_window(key)
    local fn = fixed_window
    if algo == 's' then
      fn = sliding_window
    end
    local changed, ni, np, nc
    ok, changed, ni, np, nc, retry, remaining, reset = fn(oi, op, oc, now, cost, capacity, period)
    if ok then
      if changed then
        nw = nw + 1
        wkey[nw], wval[nw], wttl[nw], wop[nw] =
          key, window_value(ni, np, nc), ttl_ms((ni + 2) * period - now, slack), i
      end
    else
      retry = math.max(retry, 1e-6)
    end
  end
  if not ok then
    allowed = false
  end
  out[2 + i] = remaining
  out[2 + n + i] = fmt(reset)
  out[2 + n + n + i] = fmt0(retry)
end

if not allowed then
  return out
end
out[1] = 1
out[2] = fmt0(delay)
if dry then
  return out
end
if want_values then
  for i = 1, n do
    out[2 + 3 * n + i] = redis.call('GET', KEYS[i]) or ''
    out[2 + 4 * n + i] = ''
  end
end
for j = 1, nw do
  redis.call('SET', wkey[j], wval[j], 'PX', wttl[j])
  if want_values then
    out[2 + 4 * n + wop[j]] = wval[j]
  end
end
local record = KEYS[n + 1]
a = 6 + 4 * n
if record then
  -- One string (not a hash): one SET instead of DEL + HSET + PEXPIRE, and less memory.
  -- Layout: settled flag (first byte, flipped in place by settle.lua), reserved, expiry,
  -- local adjustments, foreign adjustments; newline-separated (JSON escapes newlines).
  local ttl = tonumber(ARGV[a + 1])
  redis.call('SET', record,
    '0\n' .. ARGV[a] .. '\n' .. fmt(now + ttl) .. '\n' .. ARGV[a + 2] .. '\n' .. ARGV[a + 3],
    'PX', ttl_ms(ttl, slack))
end
return out
