-- sluicegate shared Lua library (no KEYS, no ARGV of its own).
--
-- Prepended by sluicegate.stores.redis to apply.lua, settle.lua and adjust.lua when the scripts
-- are loaded, so the arithmetic exists once. Every function mirrors its Python twin in
-- src/sluicegate/algorithms/ operation for operation: same order of floating-point operations,
-- same EPSILONs, same floor/ceil, so Lua and Python produce bit-identical doubles
-- (tests/test_redis_store.py cross-checks them on random sequences).
--
-- Stored values (all strings, floats written with %.17g so a round trip loses nothing):
--   GCRA         "<tat>"                             PEXPIRE until the bucket is full (tat - now)
--   windows      "<index> <previous> <current>"      PEXPIRE until the window lapses
--   concurrency  "<in_flight> <lease_expiry>"        PEXPIRE lease (limit.period)
-- Values carry their own expiry instants, so a controlled ("override") clock behaves exactly
-- like MemoryStore; key TTLs only reclaim memory.

local EPSILON = 1e-7          -- algorithms/gcra.py EPSILON
local COUNT_EPSILON = 1e-9    -- algorithms/windows.py COUNT_EPSILON
local EPOCH = 1700000000      -- TIME is shifted by this so times stay ~1e8 s (ulp ~15 ns)
local INF = math.huge
local EMPTY_INDEX = -4611686018427387904  -- -(2**62): memory.py _EMPTY_WINDOW

local function fmt(x)
  return string.format('%.17g', x)
end

-- fmt for reply values that are usually exactly 0 (a retry_after or delay of an admission):
-- skipping string.format there saves a tenth of a decision's time in Redis.
local function fmt0(x)
  if x == 0 then
    return '0'
  end
  return string.format('%.17g', x)
end

-- The decision clock: Redis TIME (one clock for every replica) unless the caller overrides it.
local function read_now(override)
  if override ~= '' then
    return tonumber(override)
  end
  local t = redis.call('TIME')
  return (tonumber(t[1]) - EPOCH) + tonumber(t[2]) / 1000000
end

-- Key time-to-live in whole milliseconds (never 0, which PX rejects) plus the store's slack.
-- An integral Lua number reaches redis.call as its decimal digits (exact below 1e14 ms).
local function ttl_ms(seconds, slack)
  local ms = math.ceil(seconds * 1000)
  if ms < 1 then
    ms = 1
  end
  return ms + slack
end

-- algorithms/gcra.py -----------------------------------------------------------------------
local function gcra_remaining(tat, now, interval, burst)
  local used = 0.0
  if tat > now then
    used = tat - now
  end
  local left = (burst * interval - used + EPSILON) / interval
  local remaining = 0
  if left > 0.0 then
    remaining = math.floor(left)
  end
  return remaining, used
end

-- algorithms/gcra.py gcra_step; returns allowed, new_tat, delay, retry_after, remaining, reset
local function gcra(tat, now, cost, interval, burst, max_delay)
  local cap = burst * interval
  if cost > burst then
    local remaining, used = gcra_remaining(tat, now, interval, burst)
    return false, tat, 0.0, INF, remaining, used
  end
  local base = now
  if tat > now then
    base = tat
  end
  local new_tat = base + cost * interval
  local excess = new_tat - now - cap
  if excess <= max_delay + EPSILON then
    local state = tat
    if cost > 0 then
      state = new_tat
    end
    local remaining, used = gcra_remaining(state, now, interval, burst)
    local delay = 0.0
    if excess > EPSILON then
      delay = excess
    end
    return true, state, delay, 0.0, remaining, used
  end
  local remaining, used = gcra_remaining(tat, now, interval, burst)
  return false, tat, 0.0, excess, remaining, used
end

local function gcra_adjust(tat, now, delta, interval)
  if delta >= 0 then
    local base = now
    if tat > now then
      base = tat
    end
    return base + delta * interval
  end
  local new_tat = tat + delta * interval
  if new_tat > now then
    return new_tat
  end
  return now
end

-- algorithms/windows.py --------------------------------------------------------------------
local function roll(old_index, prev, curr, index)
  if index == old_index then
    return prev, curr
  end
  if index == old_index + 1 then
    return curr, 0.0
  end
  return 0.0, 0.0
end

local function floor0(x)
  local f = math.floor(x)
  if f < 0 then
    return 0
  end
  return f
end

-- returns allowed, changed, index, prev, curr, retry_after, remaining, reset
local function fixed_window(oi, op, oc, now, cost, limit, window)
  local index = math.floor(now / window)
  local _, curr = roll(oi, op, oc, index)
  local reset = (index + 1) * window - now
  if cost > limit then
    return false, false, oi, op, oc, INF, floor0(limit - curr), reset
  end
  if curr + cost <= limit + COUNT_EPSILON then
    local new_curr = curr + cost
    if cost > 0 then
      return true, true, index, 0.0, new_curr, 0.0, floor0(limit - new_curr), reset
    end
    return true, false, oi, op, oc, 0.0, floor0(limit - new_curr), reset
  end
  return false, false, oi, op, oc, reset, floor0(limit - curr), reset
end

local function sliding_retry(prev, curr, now, start, cost, limit, window)
  if curr + cost <= limit and prev > 0 then
    local w_needed = (limit - curr - cost) / prev
    return start + window * (1.0 - w_needed) - now
  end
  local next_start = start + window
  if curr <= 0 then
    return next_start - now
  end
  local w_needed = (limit - cost) / curr
  return next_start + window * (1.0 - math.min(1.0, w_needed)) - now
end

local function sliding_window(oi, op, oc, now, cost, limit, window)
  local index = math.floor(now / window)
  local prev, curr = roll(oi, op, oc, index)
  local start = index * window
  local weight = 1.0 - (now - start) / window
  local estimate = prev * weight + curr
  local reset
  if curr > 0 then
    reset = start + 2 * window - now
  elseif prev > 0 then
    reset = start + window - now
  else
    reset = 0.0
  end
  if cost > limit then
    return false, false, oi, op, oc, INF, floor0(limit - estimate), reset
  end
  if cost < 0 or estimate + cost <= limit + COUNT_EPSILON then
    -- a negative cost is a deposit (the retry budget, policy/resolve.py): it always lands
    local left = limit - estimate - cost
    if cost ~= 0 then
      return true, true, index, prev, curr + cost, 0.0, floor0(left + COUNT_EPSILON), reset
    end
    return true, false, oi, op, oc, 0.0, floor0(left + COUNT_EPSILON), reset
  end
  return false, false, oi, op, oc,
    sliding_retry(prev, curr, now, start, cost, limit, window),
    floor0(limit - estimate + COUNT_EPSILON), reset
end

-- algorithms/concurrency.py ----------------------------------------------------------------
local function concurrency_acquire(in_flight, cost, limit)
  if cost <= limit and in_flight + cost <= limit then
    local new = in_flight + cost
    return true, new, floor0(limit - new)
  end
  return false, in_flight, floor0(limit - in_flight)
end

local function concurrency_release(in_flight, cost)
  local new = in_flight - cost
  if new > 0 then
    return new
  end
  return 0.0
end

-- stored state -----------------------------------------------------------------------------
local function read_tat(key)
  local v = redis.call('GET', key)
  if v then
    return tonumber(v) or 0.0
  end
  return 0.0
end

-- returns index, prev, curr, present
local function read_window(key)
  local v = redis.call('GET', key)
  if v then
    local i, p, c = string.match(v, '^(%S+) (%S+) (%S+)$')
    if i then
      return tonumber(i), tonumber(p), tonumber(c), true
    end
  end
  return EMPTY_INDEX, 0.0, 0.0, false
end

-- returns in_flight, lease_expiry, present
local function read_held(key)
  local v = redis.call('GET', key)
  if v then
    local n, lease = string.match(v, '^(%S+) (%S+)$')
    if n then
      return tonumber(n), tonumber(lease), true
    end
  end
  return 0.0, 0.0, false
end

local function window_value(index, prev, curr)
  return fmt(index) .. ' ' .. fmt(prev) .. ' ' .. fmt(curr)
end

-- memory.py MemoryStore._adjust_window: add to (or take from, never below 0) the current count.
local function adjust_window(key, period, delta, now, slack)
  local si, sp, sc, present = read_window(key)
  local index = math.floor(now / period)
  local ttl = ttl_ms((index + 2) * period - now, slack)
  if (not present) or si ~= index then
    if delta <= 0 then
      return
    end
    local prev = 0.0
    if present and si == index - 1 then
      prev = sc
    end
    redis.call('SET', key, window_value(index, prev, delta), 'PX', ttl)
    return
  end
  redis.call('SET', key, window_value(index, sp, math.max(0.0, sc + delta)), 'PX', ttl)
end

-- One after-the-fact adjustment (settle, or compensation of a refused multi-slot decision):
--   kind 't': charge `amount` (> 0 debit, < 0 refund) to a token bucket: GCRA if `algo` is
--             'g', else a window counter (as memory.py does for every non-GCRA token bucket)
--   kind 'c': release `amount` concurrency slots
-- memory.py MemoryStore.settle_sync, one bucket at a time, in the same order.
local function adjust(kind, key, algo, period, amount, now, slack)
  if kind == 't' then
    if algo == 'g' then
      local new_tat = gcra_adjust(read_tat(key), now, amount, period)
      if new_tat > now then
        redis.call('SET', key, fmt(new_tat), 'PX', ttl_ms(new_tat - now, slack))
      else
        redis.call('DEL', key)
      end
    else
      adjust_window(key, period, amount, now, slack)
    end
  else
    local n, lease, present = read_held(key)
    if present then
      n = concurrency_release(n, amount)
      if n <= 0 then
        redis.call('DEL', key)
      else
        redis.call('SET', key, fmt(n) .. ' ' .. fmt(lease), 'KEEPTTL')
      end
    end
  end
end


-- Put back a bucket's value from before a consumption (exact compensation), with the TTL that
-- value implies; a value that carries no information any more (or was absent) is deleted.
local function restore(key, kind, algo, period, prior, now, slack)
  if prior == '' then
    redis.call('DEL', key)
    return
  end
  local remaining_s
  if kind == 'c' or algo == 'c' then
    local _, lease = string.match(prior, '^(%S+) (%S+)$')
    remaining_s = (tonumber(lease) or 0) - now
  elseif algo == 'g' then
    remaining_s = (tonumber(prior) or 0) - now
  else
    local i = string.match(prior, '^(%S+) ')
    remaining_s = ((tonumber(i) or 0) + 2) * period - now
  end
  if remaining_s > 0 then
    redis.call('SET', key, prior, 'PX', ttl_ms(remaining_s, slack))
  else
    redis.call('DEL', key)
  end
end
