#!lua name=pyhistory_v3
--[[
pyhistory: chat-message history in Redis, one LIST per session.

Data layout (shared with langchain_community's RedisChatMessageHistory):
  KEYS[1]   the session's LIST, key_prefix .. session_id, built by the caller
  elements  one serialised message each, newest first (LPUSH order); opaque to this library

  KEYS[2]   (append only) the session's batch ids: a STRING in the session's own cluster slot,
            named by the caller (pyhistory: docs/exactly-once.md), e.g.
              message_store:abc        ->  pyhistory:batches:{message_store:abc}
              message_store:{abc}      ->  pyhistory:batches:message_store:{abc}

Every function touches only the keys it is given in KEYS, all in the session's slot, so Redis
Cluster routes each call by the session's key. No function builds a key name.

Exactly-once appends: every append carries a batch id, made once per batch by the caller and sent
again unchanged by every retry of that batch. The ids of the session's last REMEMBERED batches (at
least; up to twice as many) are kept in KEYS[2] for WINDOW seconds after its latest append; an
append whose id is among them was already applied (its reply was lost) and is not applied again.
The entries themselves are stored exactly as given: readers of the LIST (langchain_community) see
no difference. KEYS[2] holds the ids end to end, oldest first: each append reads them and
refreshes their expiry (GETEX) and APPENDs its id (12 bytes: what a replica and the AOF receive,
beside the expiry); one append in REMEMBERED rewrites them to the newest REMEMBERED.

Versioning: the library and every function carry the contract version (v3). Any change to this
file ships under a new version (pyhistory_v4, pyhistory_v4_append, ...), so two releases loaded on
one server never replace each other's code. Old versions (pyhistory_v2: the same functions, an
append without batch ids) stay until removed on purpose.

Errors: every argument is checked before the first write (a function that fails half-way is not
rolled back). A violation is an error reply "CODE message" with one of these code words:
  BADARGS   wrong number of keys or arguments
  BADSIZE   a count (max_messages, window size) that is not an integer in [0, MAX_INT]
  BADTTL    a TTL that is not an integer number of seconds in [0, MAX_INT]
  TOOMANY   a batch of more than MAX_BATCH entries
The server's own WRONGTYPE error comes back unchanged when KEYS[1] holds another type; it is
raised by the first command, before anything is written.
]]

local MAX_INT = 2147483647 -- largest count or TTL accepted (about 68 years in seconds)
local MAX_BATCH = 10000 -- most entries one append may carry
local CHUNK = 1000 -- entries per LPUSH: keeps unpack() within Lua's stack limit
local ID_LEN = 12 -- bytes in a batch id (pyhistory sends 96 random bits)
local REMEMBERED = 256 -- batch ids kept at least, per session (concurrent writers to one session)
local WINDOW = 300 -- seconds the ids are kept after the session's latest append
local KEPT = (REMEMBERED - 1) * ID_LEN -- bytes of older ids kept beside a new one at a trim
local FULL = 2 * REMEMBERED * ID_LEN -- bytes the ids grow to before a trim

-- An error reply "CODE message". Functions return it (rather than raise it), so the client
-- gets the message exactly as written, without the script location Redis appends to errors.
local function bad(code, message)
  return redis.error_reply(code .. ' ' .. message)
end

-- A non-negative integer argument (a count or a TTL in seconds; 0 means "none"), or nil.
-- Plain decimal digits only: tonumber() alone would take " 5", "1e3", "0x10", and read "5\0junk"
-- as 5 (it stops at a NUL byte).
local function whole(value)
  if #value == 0 or #value > 10 or string.find(value, '%D') then
    return nil
  end
  local n = tonumber(value)
  if n > MAX_INT then
    return nil
  end
  return n
end

-- The start of a rejected argument, quoted, for an error message.
local function shown(value)
  return string.format('%q', string.sub(value, 1, 24))
end

local function not_whole(code, name, value)
  return bad(code, name .. ' must be an integer in [0, ' .. MAX_INT .. '], got ' .. shown(value))
end

local function wrong_arity(nargs, usage)
  return bad('BADARGS', 'expected 1 key and ' .. nargs .. ' arguments: ' .. usage)
end

-- Whether the batch id `id` is one of the ids in `seen` (ids of ID_LEN bytes, end to end).
local function remembered(seen, id)
  local at = string.find(seen, id, 1, true)
  while at do
    if (at - 1) % ID_LEN == 0 then
      return true
    end
    at = string.find(seen, id, at + 1, true)
  end
  return false
end

--[[
append: add a batch of messages to a session, trim it to its bound, set or refresh its TTL;
exactly once per batch id.
  KEYS[1]   the session's LIST
  KEYS[2]   the session's batch ids (a STRING in KEYS[1]'s cluster slot; see the header)
  ARGV[1]   max_messages: keep only the newest N entries; 0 = unbounded
  ARGV[2]   ttl: EXPIRE the key after this many seconds; 0 = leave the TTL as it is
  ARGV[3]   the batch id: exactly ID_LEN bytes, new for each batch, the same for its retries
  ARGV[4..] the entries, oldest first (each is LPUSHed, so the last ends up at the head)
  reply     integer: the session's length after the append and the trim; for a batch already
            applied, the session's length now (nothing is written but the ids' expiry)
  errors    BADARGS (no entries, a batch id of another length), BADSIZE, BADTTL, TOOMANY,
            WRONGTYPE (either key)
All of it happens in one atomic step: no reader sees the batch half-written, the list over its
bound, or the key without its TTL. The ids' expiry is refreshed first (GETEX), before the
checks of the session's key: an append refused with WRONGTYPE may leave that behind, and nothing
else. A batch already applied still refreshes it: a write, so that a WAIT after the retry also
waits for the first attempt's write.
]]
local function append(keys, args)
  local last = #args
  if #keys ~= 2 or last < 4 then
    return bad('BADARGS',
      'expected 2 keys and at least 4 arguments: max_messages ttl batch_id entry...')
  end
  local key, ids = keys[1], keys[2]
  local max_messages = whole(args[1])
  if not max_messages then return not_whole('BADSIZE', 'max_messages', args[1]) end
  local ttl = whole(args[2])
  if not ttl then return not_whole('BADTTL', 'ttl', args[2]) end
  local id = args[3]
  if #id ~= ID_LEN then
    return bad('BADARGS', 'a batch id has ' .. ID_LEN .. ' bytes, got ' .. #id)
  end
  if last - 3 > MAX_BATCH then
    return bad('TOOMANY', 'a batch holds at most ' .. MAX_BATCH .. ' entries, got ' .. (last - 3))
  end

  -- the ids, their expiry refreshed in the same command (a write: a WAIT after a retry also
  -- waits for the first attempt's write); on a new session, nothing
  local seen = redis.call('GETEX', ids, 'EX', WINDOW) or ''
  if remembered(seen, id) then
    return redis.call('LLEN', key)
  end
  local length
  for first = 4, last, CHUNK do
    length = redis.call('LPUSH', key, unpack(args, first, math.min(first + CHUNK - 1, last)))
  end
  if max_messages > 0 and length > max_messages then
    redis.call('LTRIM', key, 0, max_messages - 1)
    length = max_messages
  end
  if ttl > 0 then
    redis.call('EXPIRE', key, ttl)
  end
  if #seen == 0 then
    redis.call('SET', ids, id, 'EX', WINDOW)
  elseif #seen < FULL then
    redis.call('APPEND', ids, id) -- its expiry was refreshed by GETEX
  else
    redis.call('SET', ids, string.sub(seen, -KEPT) .. id, 'EX', WINDOW)
  end
  return length
end

--[[
window: the newest entries of a session, refreshing its TTL (sliding expiry). Flagged allow-oom.
  KEYS[1]   the session's LIST
  ARGV[1]   count: how many of the newest entries; 0 = all
  ARGV[2]   ttl: when > 0 and the session exists, EXPIRE it after this many seconds
  reply     array of entries, newest first (empty when the session does not exist)
  errors    BADARGS, BADSIZE, BADTTL, WRONGTYPE
]]
local function window(keys, args)
  if #keys ~= 1 or #args ~= 2 then return wrong_arity(2, 'count ttl') end
  local key = keys[1]
  local count = whole(args[1])
  if not count then return not_whole('BADSIZE', 'count', args[1]) end
  local ttl = whole(args[2])
  if not ttl then return not_whole('BADTTL', 'ttl', args[2]) end

  local entries = redis.call('LRANGE', key, 0, count - 1)
  if ttl > 0 and entries[1] then
    redis.call('EXPIRE', key, ttl)
  end
  return entries
end

--[[
window_ro: window without the TTL refresh; flagged no-writes, so FCALL_RO may run it on a replica.
  KEYS[1]   the session's LIST
  ARGV[1]   count: how many of the newest entries; 0 = all
  reply     array of entries, newest first (empty when the session does not exist)
  errors    BADARGS, BADSIZE, WRONGTYPE
]]
local function window_ro(keys, args)
  if #keys ~= 1 or #args ~= 1 then return wrong_arity(1, 'count') end
  local count = whole(args[1])
  if not count then return not_whole('BADSIZE', 'count', args[1]) end
  return redis.call('LRANGE', keys[1], 0, count - 1)
end

--[[
touch: set or refresh a session's TTL without reading or writing its entries. Flagged allow-oom.
Clients send it in one flight with a plain LRANGE of the same key: a read that refreshes the TTL
for the server cost of a plain read (window would pull every entry through Lua).
  KEYS[1]   the session's LIST
  ARGV[1]   ttl in seconds, at least 1
  reply     integer: 1 when the session exists (its TTL is now ttl), 0 when it does not
  errors    BADARGS, BADTTL, WRONGTYPE (the key holds another type: its TTL is left alone)
]]
local function touch(keys, args)
  if #keys ~= 1 or #args ~= 1 then return wrong_arity(1, 'ttl') end
  local key = keys[1]
  local ttl = whole(args[1])
  if not ttl or ttl == 0 then
    return bad('BADTTL', 'ttl must be an integer in [1, ' .. MAX_INT .. '], got ' .. shown(args[1]))
  end
  local kind = redis.call('TYPE', key).ok
  if kind == 'none' then
    return 0
  end
  if kind ~= 'list' then
    return bad('WRONGTYPE', 'Operation against a key holding the wrong kind of value')
  end
  return redis.call('EXPIRE', key, ttl)
end

--[[
length: how many entries a session holds; flagged no-writes.
  KEYS[1]   the session's LIST
  reply     integer: the number of entries (0 when the session does not exist)
  errors    BADARGS, WRONGTYPE
]]
local function length(keys, args)
  if #keys ~= 1 or #args ~= 0 then return wrong_arity(0, '(none)') end
  return redis.call('LLEN', keys[1])
end

-- The library's whole surface. Names carry the contract version; see the header.
redis.register_function{function_name = 'pyhistory_v3_append', callback = append}
-- window and touch write only a TTL, which takes no memory to speak of: allow-oom lets a chat read
-- its history while the server is out of memory under the noeviction policy, as LRANGE could.
redis.register_function{
  function_name = 'pyhistory_v3_window', callback = window, flags = {'allow-oom'}}
redis.register_function{
  function_name = 'pyhistory_v3_window_ro', callback = window_ro, flags = {'no-writes'}}
redis.register_function{
  function_name = 'pyhistory_v3_touch', callback = touch, flags = {'allow-oom'}}
redis.register_function{
  function_name = 'pyhistory_v3_length', callback = length, flags = {'no-writes'}}
