"""The Lua scripts behind RedisBudget: a reservation and its settle are one atomic script each.

Both scripts work on N counters, whatever they count: a counter is a hash with integer fields
`spent` and `reserved`, plus its limit, the amount to reserve and its expiry, all passed as data
(RedisBudget builds them: daily and monthly budgets in micro-dollars, requests and tokens per
minute, for every scope of the request). A new scope or window is more counters, not more script.

Each outstanding reservation is also a member `{id}|{amount}:{key}|{amount}:{key}...` of the sorted
set `qlens:budget:leases`, scored by the time (ms) after which it is presumed abandoned (its gateway
replica died between reserve and settle). RESERVE first returns such leases' amounts (to counters
that still exist), so a crash cannot hold budget for the rest of the window; SETTLE removes the
lease and only releases the reservation if the lease was still there, so a reservation is released
exactly once. Names never contain `|` (services/common/apikeys.NAME_RE).
"""

# KEYS: counter_1 .. counter_n, leases
# ARGV: n, now (ms), lease_until (ms), lease member, then per counter: limit (-1 = none), amount,
#       expire_at (s)
# -> {1, 0, spent_1, reserved_1, ..., spent_n, reserved_n}   (reserved, counts after reserving)
#  | {0, i, spent_1, reserved_1, ..., spent_n, reserved_n}   (refused by counter i, counts before)
RESERVE = """
local n = tonumber(ARGV[1])
local leases = KEYS[n + 1]
local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', ARGV[2], 'LIMIT', 0, 100)
for _, m in ipairs(expired) do
  redis.call('ZREM', leases, m)
  for amt, key in string.gmatch(m, '|(%d+):([^|]+)') do
    if redis.call('EXISTS', key) == 1 then
      redis.call('HINCRBY', key, 'reserved', 0 - tonumber(amt))
    end
  end
end
local state = {1, 0}
local refused = 0
for i = 1, n do
  local v = redis.call('HMGET', KEYS[i], 'spent', 'reserved')
  local spent = tonumber(v[1]) or 0
  local reserved = tonumber(v[2]) or 0
  local limit = tonumber(ARGV[2 + 3 * i])
  if refused == 0 and limit >= 0 and spent + reserved + tonumber(ARGV[3 + 3 * i]) > limit then
    refused = i
  end
  state[#state + 1] = spent
  state[#state + 1] = reserved
end
if refused > 0 then
  state[1] = 0
  state[2] = refused
  return state
end
for i = 1, n do
  local amount = tonumber(ARGV[3 + 3 * i])
  redis.call('HINCRBY', KEYS[i], 'reserved', amount)
  redis.call('EXPIREAT', KEYS[i], ARGV[4 + 3 * i])
  state[2 + 2 * i] = state[2 + 2 * i] + amount
end
redis.call('ZADD', leases, ARGV[3], ARGV[4])
redis.call('PEXPIREAT', leases, tonumber(ARGV[3]) + 86400000)
return state
"""

# KEYS: counter_1 .. counter_n, leases, ledger hash, ledger index
# ARGV: n, lease member, ledger expire_at (s; 0 = no ledger), tenant, then per counter: reserved
#       amount, actual amount, expire_at (s), then the ledger's (field, increment) pairs
# -> {lease_was_held, spent_1, reserved_1, ..., spent_n, reserved_n}
SETTLE = """
local n = tonumber(ARGV[1])
local held = redis.call('ZREM', KEYS[n + 1], ARGV[2])
local out = {held}
for i = 1, n do
  if held == 1 then  -- (0 - x, not -x: Lua writes -0 for a zero amount, which Redis refuses)
    redis.call('HINCRBY', KEYS[i], 'reserved', 0 - tonumber(ARGV[2 + 3 * i]))
  end
  local spent = redis.call('HINCRBY', KEYS[i], 'spent', ARGV[3 + 3 * i])
  redis.call('EXPIREAT', KEYS[i], ARGV[4 + 3 * i])
  out[#out + 1] = spent
  out[#out + 1] = tonumber(redis.call('HGET', KEYS[i], 'reserved')) or 0
end
if ARGV[3] ~= '0' then
  for j = 5 + 3 * n, #ARGV, 2 do
    redis.call('HINCRBY', KEYS[n + 2], ARGV[j], ARGV[j + 1])
  end
  redis.call('EXPIREAT', KEYS[n + 2], ARGV[3])
  redis.call('SADD', KEYS[n + 3], ARGV[4])
  redis.call('EXPIREAT', KEYS[n + 3], ARGV[3])
end
return out
"""
