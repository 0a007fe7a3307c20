"""The Lua scripts behind RedisBudget: each budget operation is one atomic script.

Counters are hashes `{prefix}{scope}:{id}` with integer fields `spent` and `reserved` in
micro-dollars, where prefix is `qlens:budget:{YYYY-MM-DD}:` and the ids are `total:all`,
`tenant:{tenant}` and `user:{tenant}/{user}`. Every key expires a margin after its UTC day.

Each outstanding reservation is also a member `{id}|{micros}|{tenant}|{user}` of the day's sorted
set `{prefix}leases`, scored by the time (ms) after which it is presumed abandoned (its gateway
replica died between reserve and settle). RESERVE first returns such leases' amounts, so a crash
cannot hold budget for the rest of the day; SETTLE removes the lease and only releases the
reservation if the lease was still there, so a reservation is released exactly once.
"""

# KEYS: total, tenant, user, leases
# ARGV: amount, limit_total, limit_tenant, limit_user (-1 = no limit), expire_at (s), now (ms),
#       lease_until (ms), lease member, key prefix (to release reaped leases)
# -> {1, spent_1, reserved_1, spent_2, reserved_2, spent_3, reserved_3} (after reserving)
#  | {0, refused scope index 1..3, spent, reserved}
RESERVE = """
local amount = tonumber(ARGV[1])
local prefix = ARGV[9]
local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ARGV[6], 'LIMIT', 0, 100)
for _, m in ipairs(expired) do
  redis.call('ZREM', KEYS[4], m)
  local amt, tenant, user = string.match(m, '^[^|]+|(%d+)|([^|]+)|([^|]+)$')
  if amt then
    redis.call('HINCRBY', prefix .. 'total:all', 'reserved', -tonumber(amt))
    redis.call('HINCRBY', prefix .. 'tenant:' .. tenant, 'reserved', -tonumber(amt))
    redis.call('HINCRBY', prefix .. 'user:' .. tenant .. '/' .. user, 'reserved', -tonumber(amt))
  end
end
local state = {1}
for i = 1, 3 do
  local v = redis.call('HMGET', KEYS[i], 'spent', 'reserved')
  local spent = tonumber(v[1]) or 0
  local reserved = tonumber(v[2]) or 0
  local limit = tonumber(ARGV[1 + i])
  if limit >= 0 and spent + reserved + amount > limit then
    return {0, i, spent, reserved}
  end
  state[#state + 1] = spent
  state[#state + 1] = reserved + amount
end
for i = 1, 3 do
  redis.call('HINCRBY', KEYS[i], 'reserved', amount)
  redis.call('EXPIREAT', KEYS[i], ARGV[5])
end
redis.call('ZADD', KEYS[4], ARGV[7], ARGV[8])
redis.call('EXPIREAT', KEYS[4], ARGV[5])
return state
"""

# KEYS: total, tenant, user, leases
# ARGV: reserved amount, actual amount (0 = release), lease member, expire_at (s)
# -> {lease_was_held, spent_1, reserved_1, spent_2, reserved_2, spent_3, reserved_3}
SETTLE = """
local held = redis.call('ZREM', KEYS[4], ARGV[3])
local out = {held}
for i = 1, 3 do
  if held == 1 then
    redis.call('HINCRBY', KEYS[i], 'reserved', -tonumber(ARGV[1]))
  end
  local spent = redis.call('HINCRBY', KEYS[i], 'spent', ARGV[2])
  redis.call('EXPIREAT', KEYS[i], ARGV[4])
  out[#out + 1] = spent
  out[#out + 1] = tonumber(redis.call('HGET', KEYS[i], 'reserved')) or 0
end
return out
"""
