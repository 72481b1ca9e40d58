"""The store's Lua scripts: each runs atomically on the one slot of a user's keys."""

from service.store_codec import LOG_EVENT

# Append accepted events to one user's log: the /events write. KEYS: log, dedup, ans:<version>,
# state. ARGV: now, id expiry (now + retention), dedup retention s, user TTL s (0 = none), the
# state layout the model needs (header bytes 1-5), the state formats a reader knows, the log's format
# byte, the records (store_codec.LOG_EVENT), then one event id per record ('' = none).
# An id seen and unexpired, or repeated in the batch, is a duplicate: its record is not appended.
# Returns {accepted, duplicates, log bytes after}, or {-1, 0, 0} (nothing written) when the stored
# state was written for another layout or is too short to say.
LOG = """
local head = redis.call('GETRANGE', KEYS[4], 0, 5)
if head ~= '' then
  local known = string.find(ARGV[6], string.sub(head, 1, 1), 1, true)
  if not known or string.sub(head, 2) ~= ARGV[5] then return {-1, 0, 0} end
end
local now = tonumber(ARGV[1])
local out, accepted, dups, seen, ids = {}, 0, 0, {}, false
for i = 9, #ARGV do
  local id = ARGV[i]
  local dup = false
  if id ~= '' then
    ids = true
    if seen[id] then
      dup = true
    else
      local until_ = redis.call('ZSCORE', KEYS[2], id)
      dup = until_ and tonumber(until_) > now
    end
    if not dup then
      seen[id] = true
      redis.call('ZADD', KEYS[2], ARGV[2], id)
    end
  end
  if dup then
    dups = dups + 1
  else
    accepted = accepted + 1
    out[accepted] = string.sub(ARGV[8], (i - 9) * RECORD + 1, (i - 8) * RECORD)
  end
end
if ids then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
if accepted == 0 then return {0, dups, redis.call('STRLEN', KEYS[1])} end
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], ARGV[7]) end
local len = redis.call('APPEND', KEYS[1], table.concat(out))
redis.call('DEL', KEYS[3])
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[4], ttl)
end
return {accepted, dups, len}
""".replace("RECORD", str(LOG_EVENT.size))

# Fold one user's logged events into the state (compare-and-set). KEYS: state, log, tok:<version>,
# hist, mem:<version>. ARGV: expected state head ("" = no state yet), new state, new tokens ("" =
# keep), history op ("" | "a"+bytes to append | "s"+bytes to replace | "t<n>:"+bytes to append, then
# drop the first n bytes), new memory ("" = keep), user TTL s (0 = none), derived TTL s, log bytes
# folded (its first ones: the format byte and the records applied). Events appended to the log
# since it was read stay in it. Returns 1, or 0 when the state moved (another fold) meanwhile.
FOLD = """
if string.len(ARGV[1]) == 0 then
  if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
elseif redis.call('GETRANGE', KEYS[1], 0, string.len(ARGV[1]) - 1) ~= ARGV[1] then
  return 0
end
local folded = tonumber(ARGV[8])
local logged = redis.call('STRLEN', KEYS[2])
if logged < folded then return 0 end
local ttl = tonumber(ARGV[6])
if ttl > 0 then redis.call('SET', KEYS[1], ARGV[2], 'EX', ttl) else redis.call('SET', KEYS[1], ARGV[2]) end
if logged == folded then
  redis.call('DEL', KEYS[2])
elseif folded > 0 then
  local rest = redis.call('GETRANGE', KEYS[2], 0, 0) .. redis.call('GETRANGE', KEYS[2], folded, -1)
  redis.call('SET', KEYS[2], rest, 'KEEPTTL')
end
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
return 1
"""

# Write derived state only if the user's state is still the one it was computed from.
# KEYS: state, target. ARGV: expected state head, value, TTL s.
SET_DERIVED = """
if redis.call('GETRANGE', KEYS[1], 0, string.len(ARGV[1]) - 1) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return 1
"""

# Keep a rendered answer only if it describes every accepted event: the state is still the one it
# was computed from and no event waits in the log (the log's append deletes the answers, so an
# answer written after it, from the state before it, must not land). KEYS: state, log,
# ans:<version>. ARGV: expected state head, request shape, stamped answer, TTL s.
SET_ANSWER = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('GETRANGE', KEYS[1], 0, string.len(ARGV[1]) - 1) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[4])
return 1
"""
