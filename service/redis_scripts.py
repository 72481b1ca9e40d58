"""The store's Lua scripts: each runs atomically on the one slot of a user's keys."""

# Compare-and-set append, one user. KEYS: state, dedup, tok:<version>, hist, mem:<version>,
# ans:<version> (rendered answers: deleted, they describe the state before).
# ARGV: expected state head ("" = no state yet), new state, new tokens ("" = keep), history op
# ("" | "a"+bytes to append | "s"+bytes to replace | "t<n>:"+bytes to append, then drop the first n
# bytes), new memory ("" = keep), user TTL s (0 = none),
# derived TTL s, now, dedup retention s, then (expiry, event id) pairs. Returns 1, or 0 on conflict.
APPEND = """
local cur = redis.call('GET', KEYS[1])
local head = ''
if cur then head = string.sub(cur, 1, string.len(ARGV[1])) end
if (cur and string.len(ARGV[1]) == 0) or head ~= ARGV[1] then return 0 end
local ttl = tonumber(ARGV[6])
if ttl > 0 then redis.call('SET', KEYS[1], ARGV[2], 'EX', ttl) else redis.call('SET', KEYS[1], ARGV[2]) end
redis.call('DEL', KEYS[6])
if string.len(ARGV[3]) > 0 then redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[7]) end
if string.len(ARGV[5]) > 0 then redis.call('SET', KEYS[5], ARGV[5], 'EX', ARGV[7]) end
local op = string.sub(ARGV[4], 1, 1)
if op == 'a' then redis.call('APPEND', KEYS[4], string.sub(ARGV[4], 2)) end
if op == 's' then redis.call('SET', KEYS[4], string.sub(ARGV[4], 2)) end
if op == 't' then
  local colon = string.find(ARGV[4], ':', 2, true)
  redis.call('APPEND', KEYS[4], string.sub(ARGV[4], colon + 1))
  redis.call('SET', KEYS[4], redis.call('GETRANGE', KEYS[4], tonumber(string.sub(ARGV[4], 2, colon - 1)), -1))
end
if op ~= '' and ttl > 0 then redis.call('EXPIRE', KEYS[4], ttl) end
if #ARGV >= 10 then
  for i = 10, #ARGV, 2 do redis.call('ZADD', KEYS[2], ARGV[i], ARGV[i + 1]) end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[8])
  redis.call('EXPIRE', KEYS[2], ARGV[9])
end
return 1
"""

# Write derived state only if the user's state is still the one it was computed from.
# KEYS: state, target. ARGV: expected state head, value, TTL s.
SET_DERIVED = """
local cur = redis.call('GET', KEYS[1])
if not cur or string.sub(cur, 1, string.len(ARGV[1])) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return 1
"""
