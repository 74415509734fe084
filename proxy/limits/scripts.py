"""The Lua scripts of the Redis backend. Each runs atomically inside Redis, so no replica can ever see or
leave a half-made decision, and each is one round trip (EVALSHA, loaded again after NOSCRIPT).

Keys of one client key name N, all in the same cluster hash slot thanks to the `{N}` tag:

| key | type | holds | expires |
|---|---|---|---|
| `<prefix>{N}:rpm` | sorted set | member `<id>`, score = admission time (µs) | 61 s after the last admission |
| `<prefix>{N}:tpm` | sorted set | member `<id>:<tokens>`, score = admission time (µs) | 61 s after the last admission |
| `<prefix>{N}:tpm:sum` | string | the sum of the tokens in `:tpm` | with `:tpm` |
| `<prefix>{N}:slots` | sorted set | member `<id>`, score = lease expiry (µs) | lease + 1 s after the last admission or renewal |
| `<prefix>{N}:day` | hash | `day` (days since the epoch), `used` (tokens) | 1 h after the end of that UTC day |

Times come from Redis's `TIME`, so replicas with skewed clocks still share one exact window. Times are
integer microseconds: exact in Lua doubles and in sorted-set scores (below 2^53), and Redis formats the
numbers a script passes to commands with 17 significant digits.
"""

from __future__ import annotations

#: Decide and, when every limit allows it, record: one atomic step for all four limits.
#: KEYS: rpm, tpm, tpm:sum, slots, day.
#: ARGV: id, tokens, rpm, tpm, max_concurrent, daily_tokens (0 = unlimited), lease µs, concurrency retry µs.
#: Returns {refusal code (0 admitted, 1 rpm, 2 tpm, 3 concurrency, 4 daily_tokens), wait µs (-1 never),
#: requests, requests reset µs, tokens, tokens reset µs, day tokens, day reset µs, in flight, day}.
ADMIT = """
local WINDOW, DAY, NEVER = 60000000, 86400000000, -1
local TTL_MS = WINDOW / 1000 + 1000
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local id, tokens = ARGV[1], tonumber(ARGV[2])
local rpm, tpm, slots, daily = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local lease, slot_retry = tonumber(ARGV[7]), tonumber(ARGV[8])
local cutoff = now - WINDOW
local refused, wait = 0, 0

local function refuse(code, w)
  if refused == 0 or (wait ~= NEVER and (w == NEVER or w > wait)) then
    refused, wait = code, w
  end
end

local function member_tokens(member)
  return tonumber(string.match(member, ':(%d+)$')) or 0
end

local function reset_of_newest(key)
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #newest == 0 then return 0 end
  return tonumber(newest[2]) + WINDOW - now
end

local requests = 0
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
  requests = redis.call('ZCARD', KEYS[1])
  if requests >= rpm then
    -- The request fits once all but rpm - 1 of the logged ones have left the window.
    local entry = redis.call('ZRANGE', KEYS[1], requests - rpm, requests - rpm, 'WITHSCORES')
    refuse(1, tonumber(entry[2]) + WINDOW - now)
  end
end

local spent = 0
if tpm > 0 then
  local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff)
  if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff) end
  local stored = redis.call('GET', KEYS[3])
  if redis.call('ZCARD', KEYS[2]) == 0 then
    if stored then redis.call('DEL', KEYS[3]) end
  elseif stored then
    spent = tonumber(stored)
    for _, member in ipairs(expired) do spent = spent - member_tokens(member) end
    if #expired > 0 then redis.call('SET', KEYS[3], spent, 'PX', TTL_MS) end
  else
    -- The sum was lost (evicted): rebuild it from the log.
    for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do spent = spent + member_tokens(member) end
    redis.call('SET', KEYS[3], spent, 'PX', TTL_MS)
  end
  if tokens > tpm then
    refuse(2, NEVER)
  elseif spent + tokens > tpm then
    -- The request fits once the oldest entries holding spent + tokens - tpm tokens have left.
    local need, freed, start, found = spent + tokens - tpm, 0, 0, nil
    while found == nil do
      local batch = redis.call('ZRANGE', KEYS[2], start, start + 127, 'WITHSCORES')
      if #batch == 0 then break end
      for i = 1, #batch, 2 do
        freed = freed + member_tokens(batch[i])
        if freed >= need then
          found = tonumber(batch[i + 1]) + WINDOW - now
          break
        end
      end
      start = start + 128
    end
    refuse(2, found or reset_of_newest(KEYS[2]))
  end
end

local active = 0
if slots > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  active = redis.call('ZCARD', KEYS[4])
  if active >= slots then refuse(3, slot_retry) end
end

local day = math.floor(now / DAY)
local day_reset = (day + 1) * DAY - now
local day_used = 0
if daily > 0 then
  local state = redis.call('HMGET', KEYS[5], 'day', 'used')
  if tonumber(state[1]) == day then day_used = tonumber(state[2]) end
  if tokens > daily then
    refuse(4, NEVER)
  elseif day_used + tokens > daily then
    refuse(4, day_reset)
  end
end

if refused == 0 then
  if rpm > 0 then
    redis.call('ZADD', KEYS[1], now, id)
    redis.call('PEXPIRE', KEYS[1], TTL_MS)
    requests = requests + 1
  end
  if tpm > 0 then
    redis.call('ZADD', KEYS[2], now, id .. ':' .. ARGV[2])
    redis.call('PEXPIRE', KEYS[2], TTL_MS)
    spent = spent + tokens
    redis.call('SET', KEYS[3], spent, 'PX', TTL_MS)
  end
  if slots > 0 then
    redis.call('ZADD', KEYS[4], now + lease, id)
    redis.call('PEXPIRE', KEYS[4], math.floor(lease / 1000) + 1000)
    active = active + 1
  end
  if daily > 0 then
    day_used = day_used + tokens
    redis.call('HSET', KEYS[5], 'day', day, 'used', day_used)
    redis.call('PEXPIRE', KEYS[5], math.floor(day_reset / 1000) + 3600000)
  end
end

local requests_reset, tokens_reset = 0, 0
if rpm > 0 then requests_reset = reset_of_newest(KEYS[1]) end
if tpm > 0 then tokens_reset = reset_of_newest(KEYS[2]) end
return {refused, wait, requests, requests_reset, spent, tokens_reset, day_used, day_reset, active, day}
"""

#: Settle the tokens of an admitted request and/or free its concurrency slot.
#: KEYS: tpm, tpm:sum, day, slots.
#: ARGV: id, recorded tokens, actual tokens (-1: keep), day (-1: no daily budget), tpm (1/0), release (1/0).
#: An entry that has left its window (or a day that is over) is not touched.
FINISH = """
local id, recorded, actual = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if actual >= 0 and actual ~= recorded then
  if ARGV[5] == '1' then
    local old = id .. ':' .. ARGV[2]
    local score = redis.call('ZSCORE', KEYS[1], old)
    if score then
      redis.call('ZREM', KEYS[1], old)
      redis.call('ZADD', KEYS[1], score, id .. ':' .. ARGV[3])
      if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('INCRBY', KEYS[2], actual - recorded) end
    end
  end
  if ARGV[4] ~= '-1' then
    local state = redis.call('HMGET', KEYS[3], 'day', 'used')
    if state[1] == ARGV[4] then
      local used = tonumber(state[2]) + actual - recorded
      if used < 0 then used = 0 end
      redis.call('HSET', KEYS[3], 'used', used)
    end
  end
end
if ARGV[6] == '1' then redis.call('ZREM', KEYS[4], id) end
return 1
"""

#: Extend the leases of the slots this replica still holds; a slot already gone is not brought back.
#: KEYS: slots. ARGV: lease µs, id... Returns the ids that were not there any more.
RENEW = """
local clock = redis.call('TIME')
local expiry = tonumber(clock[1]) * 1000000 + tonumber(clock[2]) + tonumber(ARGV[1])
local missing = {}
for i = 2, #ARGV do
  if redis.call('ZADD', KEYS[1], 'XX', 'CH', expiry, ARGV[i]) == 0 then missing[#missing + 1] = ARGV[i] end
end
if #missing < #ARGV - 1 then redis.call('PEXPIRE', KEYS[1], math.floor(tonumber(ARGV[1]) / 1000) + 1000) end
return missing
"""
