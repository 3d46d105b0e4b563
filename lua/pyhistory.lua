#!lua name=pyhistory_v4
--[[
pyhistory: chat-message history in Redis, one LIST per session.

Data layout (shared with langchain_community's RedisChatMessageHistory):
  KEYS[1]   the session's LIST, key_prefix .. session_id, built by the caller
  elements  one serialised message each, newest first (LPUSH order); opaque to this library

  KEYS[2]   (append only) the session's batch ids: a STRING in the session's own cluster slot,
            named by the caller (pyhistory: docs/exactly-once.md), e.g.
              message_store:abc        ->  pyhistory:batches:{message_store:abc}
              message_store:{abc}      ->  pyhistory:batches:message_store:{abc}

  KEYS[3]   (append and clear, opt-in) a sessions index: a ZSET of session keys scored by their
            last append (milliseconds of the server's TIME), named by the caller; it must share
            the session's cluster slot (a common hash tag: chat:{alice}:s1 and sessions:{alice})

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

Versioning: the library and every function carry the contract version (v4). Any change to this
file ships under a new version (pyhistory_v5, pyhistory_v5_append, ...), so two releases loaded on
one server never replace each other's code. Old versions (pyhistory_v3: the same append, window,
touch and length, without compaction, edits and the sessions index; pyhistory_v2: an append
without batch ids) stay until removed on purpose.

Errors: every argument is checked before the first write (a function that fails half-way is not
rolled back). A violation is an error reply "CODE message" with one of these code words:
  BADARGS   wrong number of keys or arguments
  BADSIZE   a count (max_messages, window size) that is not an integer in [0, MAX_INT]
  BADTTL    a TTL that is not an integer number of seconds in [0, MAX_INT]
  TOOMANY   a batch of more than MAX_BATCH entries, a compaction of more than MAX_COMPACT, an
            edit of more than MAX_IDS ids, a listing page of more than MAX_PAGE sessions
  TOOLONG   an edit of a session of more than MAX_SCAN entries (an edit reads all of them)
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
local MAX_COMPACT = 1000 -- most entries one compaction replaces
local MAX_SCAN = 10000 -- longest session an edit reads (an edit decodes candidate entries)
local MAX_IDS = 1000 -- most message ids one edit names
local MAX_PAGE = 1000 -- most sessions one listing returns
local MAX_DROP = 100 -- most expired sessions one call drops from an index

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

-- The server's clock in milliseconds (TIME: replicated as its effects, as every write here).
local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

-- Drop up to MAX_DROP members of the sessions index whose score is before `cutoff` (ms).
local function drop_expired(index, cutoff)
  local expired = redis.call('ZRANGE', index, '-inf', string.format('(%d', cutoff), 'BYSCORE',
    'LIMIT', 0, MAX_DROP)
  if expired[1] then
    redis.call('ZREM', index, unpack(expired))
  end
end

-- Record an append to the session `key` in the sessions `index`: its score becomes now; with a
-- TTL, the index expires with its newest session and forgets sessions idle longer than it.
-- The append checked the index's type (ZSCORE) before its first write.
local function indexed(index, key, ttl)
  local now = now_ms()
  redis.call('ZADD', index, string.format('%d', now), key)
  if ttl > 0 then
    drop_expired(index, now - ttl * 1000)
    redis.call('EXPIRE', index, ttl)
  end
end

--[[
append: add a batch of messages to a session, trim it to its bound, set or refresh its TTL;
exactly once per batch id.
  KEYS[1]   the session's LIST
  KEYS[2]   the session's batch ids (a STRING in KEYS[1]'s cluster slot; see the header)
  KEYS[3]   optional: a sessions index (a ZSET in KEYS[1]'s slot; see the header): KEYS[1] is
            scored with the server's TIME in ms and, when ttl > 0, the index takes the TTL and
            loses up to MAX_DROP members whose last append is more than ttl seconds old
  ARGV[1]   max_messages: keep only the newest N entries; 0 = unbounded
  ARGV[2]   ttl: EXPIRE the key after this many seconds; 0 = leave the TTL as it is
  ARGV[3]   the batch id: exactly ID_LEN bytes, new for each batch, the same for its retries
  ARGV[4..] the entries, oldest first (each is LPUSHed, so the last ends up at the head)
  reply     integer: the session's length after the append and the trim; for a batch already
            applied, the session's length now (nothing is written but the ids' expiry)
  errors    BADARGS (no entries, a batch id of another length), BADSIZE, BADTTL, TOOMANY,
            WRONGTYPE (any key)
All of it happens in one atomic step: no reader sees the batch half-written, the list over its
bound, or the key without its TTL. The ids' expiry is refreshed first (GETEX), before the
checks of the session's key: an append refused with WRONGTYPE may leave that behind, and nothing
else. A batch already applied still refreshes it: a write, so that a WAIT after the retry also
waits for the first attempt's write.
]]
local function append(keys, args)
  local last = #args
  if (#keys ~= 2 and #keys ~= 3) or last < 4 then
    return bad('BADARGS',
      'expected 2 or 3 keys and at least 4 arguments: max_messages ttl batch_id entry...')
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

  local index = keys[3]
  if index then
    redis.call('ZSCORE', index, key) -- WRONGTYPE here, before anything is written
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
  if index then
    indexed(index, key, ttl)
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

-- The SHA-1 (hex) of entries given newest first, taken oldest first, each as its length in
-- bytes, ':', then its bytes: what a caller computes over the entries it read (the lengths make
-- the boundaries unambiguous).
local function digest(entries)
  local parts = {}
  for i = #entries, 1, -1 do
    parts[#parts + 1] = #entries[i] .. ':' .. entries[i]
  end
  return redis.sha1hex(table.concat(parts))
end

--[[
compact: replace the oldest `count` entries of a session by one entry (a summary), placed where
they were (it becomes the oldest), only if the oldest entries are still exactly those the caller
read: a compare-and-swap on their digest. Entries appended meanwhile (at the head) stay.
  KEYS[1]   the session's LIST
  ARGV[1]   count: how many of the oldest entries to replace, in [1, MAX_COMPACT]
  ARGV[2]   boundary: 1 when the digest also covers the first entry kept (the one just newer
            than the replaced ones); 0 when the caller saw none (it read the whole session,
            which must then still hold exactly `count` entries)
  ARGV[3]   ttl: EXPIRE the key after this many seconds; 0 = leave the TTL as it is
  ARGV[4]   the digest: SHA-1, 40 lowercase hex digits, of the count (+ boundary) oldest entries,
            oldest first, each as <its length in bytes>:<its bytes>, concatenated
  ARGV[5]   the entry that replaces them
  reply     integer: 1 when applied, 0 when the oldest entries are no longer those (the session
            changed: read again); nothing is written then
  errors    BADARGS, BADSIZE, BADTTL, TOOMANY (count > MAX_COMPACT), WRONGTYPE
Work: one LRANGE of count + 1 entries, hashed; LSET and LTRIM. The key is never left empty, so a
TTL it had is kept when ttl is 0.
]]
local function compact(keys, args)
  if #keys ~= 1 or #args ~= 5 then
    return wrong_arity(5, 'count boundary ttl digest entry')
  end
  local key = keys[1]
  local count = whole(args[1])
  if not count or count == 0 then
    return bad('BADSIZE', 'count must be an integer in [1, ' .. MAX_INT .. '], got ' .. shown(args[1]))
  end
  if count > MAX_COMPACT then
    return bad('TOOMANY', 'a compaction replaces at most ' .. MAX_COMPACT .. ' entries, got ' .. count)
  end
  local boundary = args[2]
  if boundary ~= '0' and boundary ~= '1' then
    return bad('BADARGS', 'boundary must be 0 or 1, got ' .. shown(boundary))
  end
  local ttl = whole(args[3])
  if not ttl then return not_whole('BADTTL', 'ttl', args[3]) end
  local expected = args[4]
  if #expected ~= 40 or string.find(expected, '[^0-9a-f]') then
    return bad('BADARGS', 'digest must be 40 lowercase hex digits, got ' .. shown(expected))
  end
  local entry = args[5]

  local covered = count + tonumber(boundary)
  local oldest = redis.call('LRANGE', key, -(count + 1), -1)
  if #oldest ~= covered then
    return 0 -- shorter than read, or (boundary 0) something was appended since the whole read
  end
  if digest(oldest) ~= expected then
    return 0
  end
  redis.call('LSET', key, -count, entry)
  redis.call('LTRIM', key, 0, -count)
  if ttl > 0 then
    redis.call('EXPIRE', key, ttl)
  end
  return 1
end

-- Whether an id can be looked for verbatim in a stored entry: JSON (Python's json.dumps, which
-- escapes only '"', '\\', control and non-ASCII characters) writes it unchanged.
local function verbatim(id)
  return not string.find(id, '[%c"\\\128-\255]')
end

-- The message id (data.id) of an entry, or nil (not JSON, not a message, no id).
local function message_id(entry)
  local ok, decoded = pcall(cjson.decode, entry)
  if not ok or type(decoded) ~= 'table' or type(decoded.data) ~= 'table' then
    return nil
  end
  local id = decoded.data.id
  if type(id) ~= 'string' then
    return nil
  end
  return id
end

--[[
edit: remove the entries whose message has one of the given ids (data.id), or replace the
entries whose message has a given id by a new entry; every other entry keeps its place.
Every entry with a matching id is changed (ids may repeat in a session). An entry that is not
JSON, or not a message with a string id, never matches (and is never an error). Entries are
first searched as plain text for the id (a cheap filter), and only candidates are decoded.
  KEYS[1]   the session's LIST
  ARGV[1]   ttl: when something changed, EXPIRE the key after this many seconds; 0 = leave it
  ARGV[2]   "remove" or "replace"
  ARGV[3..] remove: the ids, 1 to MAX_IDS of them (non-empty)
            replace: ARGV[3] the id, ARGV[4] the new entry
  reply     array: the number of entries changed, then each requested id no entry had (in the
            order given)
  errors    BADARGS, BADTTL, TOOMANY (more than MAX_IDS ids), TOOLONG (a session of more than
            MAX_SCAN entries: nothing read), WRONGTYPE
Work: LLEN, one LRANGE of the whole session (at most MAX_SCAN entries), a cjson decode of each
candidate; then an LSET per change, and for a removal one LREM over the session.
]]
local function edit(keys, args)
  if #keys ~= 1 or #args < 3 then
    return bad('BADARGS', 'expected 1 key and at least 3 arguments: ttl mode id...')
  end
  local key = keys[1]
  local ttl = whole(args[1])
  if not ttl then return not_whole('BADTTL', 'ttl', args[1]) end
  local mode = args[2]
  local replacement
  if mode == 'replace' then
    if #args ~= 4 then
      return bad('BADARGS', 'replace expects 4 arguments: ttl replace id entry')
    end
    replacement = args[4]
  elseif mode == 'remove' then
    if #args - 2 > MAX_IDS then
      return bad('TOOMANY', 'an edit names at most ' .. MAX_IDS .. ' ids, got ' .. (#args - 2))
    end
  else
    return bad('BADARGS', 'mode must be remove or replace, got ' .. shown(mode))
  end
  local wanted, ids, last = {}, {}, (mode == 'replace') and 3 or #args
  for i = 3, last do
    local id = args[i]
    if #id == 0 then
      return bad('BADARGS', 'a message id is a non-empty string')
    end
    if not wanted[id] then
      wanted[id] = 0
      ids[#ids + 1] = id
    end
  end
  local size = redis.call('LLEN', key)
  if size > MAX_SCAN then
    return bad('TOOLONG', 'an edit reads at most ' .. MAX_SCAN .. ' entries, the session has ' .. size)
  end

  -- ids that show verbatim in a matching entry (the cheap filter); others need a decode each
  local plain, every = {}, false
  for _, id in ipairs(ids) do
    if verbatim(id) then plain[#plain + 1] = id else every = true end
  end
  local entries = redis.call('LRANGE', key, 0, -1)
  local hits = {}
  for i, entry in ipairs(entries) do
    local candidate = every
    if not candidate then
      for _, id in ipairs(plain) do
        if string.find(entry, id, 1, true) then
          candidate = true
          break
        end
      end
    end
    if candidate then
      local id = message_id(entry)
      if id and wanted[id] then
        wanted[id] = wanted[id] + 1
        hits[#hits + 1] = i - 1
      end
    end
  end

  if hits[1] then
    if replacement then
      for _, at in ipairs(hits) do
        redis.call('LSET', key, at, replacement)
      end
    else
      -- a marker no entry holds, set in place of each removed entry, then all removed at once
      local marker = '\0pyhistory:removed\0'
      local taken = {}
      for _, entry in ipairs(entries) do
        if string.sub(entry, 1, #marker) == marker then taken[entry] = true end
      end
      while taken[marker] do marker = marker .. '\0' end
      for _, at in ipairs(hits) do
        redis.call('LSET', key, at, marker)
      end
      redis.call('LREM', key, 0, marker)
    end
    if ttl > 0 then
      redis.call('EXPIRE', key, ttl) -- a session left empty is gone: no-op then
    end
  end
  local reply = {#hits}
  for _, id in ipairs(ids) do
    if wanted[id] == 0 then reply[#reply + 1] = id end
  end
  return reply
end

--[[
clear: delete a session and its batch ids, and forget it in its sessions index, atomically.
  KEYS[1]   the session's LIST
  KEYS[2]   the session's batch ids
  KEYS[3]   the sessions index (a ZSET in KEYS[1]'s slot)
  reply     integer: how many of KEYS[1] and KEYS[2] existed
  errors    BADARGS, WRONGTYPE (the index holds another type: nothing deleted)
]]
local function clear(keys, args)
  if #keys ~= 3 or #args ~= 0 then
    return bad('BADARGS', 'expected 3 keys and no arguments: session ids index')
  end
  redis.call('ZSCORE', keys[3], keys[1]) -- WRONGTYPE here, before anything is deleted
  local deleted = redis.call('DEL', keys[1], keys[2])
  redis.call('ZREM', keys[3], keys[1])
  return deleted
end

--[[
sessions: a page of a sessions index, the most recently appended first, forgetting sessions idle
longer than ttl first.
  KEYS[1]   the sessions index (a ZSET of session keys by last append, ms)
  ARGV[1]   ttl: when > 0, sessions whose last append is more than ttl seconds old are left out,
            and up to MAX_DROP of them dropped from the index; 0 = every session listed
  ARGV[2]   offset: how many of the newest sessions to skip, in [0, MAX_INT]
  ARGV[3]   count: how many sessions at most, in [1, MAX_PAGE]
  reply     array: session key, last append (ms since the epoch, as a string), key, time, ...
  errors    BADARGS, BADTTL, BADSIZE, TOOMANY (count > MAX_PAGE), WRONGTYPE
Work: one ZREM of at most MAX_DROP members, one ZRANGE: O(log(n) + offset + count).
]]
local function sessions(keys, args)
  if #keys ~= 1 or #args ~= 3 then return wrong_arity(3, 'ttl offset count') end
  local index = keys[1]
  local ttl = whole(args[1])
  if not ttl then return not_whole('BADTTL', 'ttl', args[1]) end
  local offset = whole(args[2])
  if not offset then return not_whole('BADSIZE', 'offset', args[2]) end
  local count = whole(args[3])
  if not count or count == 0 then
    return bad('BADSIZE', 'count must be an integer in [1, ' .. MAX_PAGE .. '], got ' .. shown(args[3]))
  end
  if count > MAX_PAGE then
    return bad('TOOMANY', 'a page holds at most ' .. MAX_PAGE .. ' sessions, got ' .. count)
  end
  local floor = '-inf'
  if ttl > 0 then
    local cutoff = now_ms() - ttl * 1000
    drop_expired(index, cutoff)
    floor = string.format('%d', cutoff)
  end
  return redis.call('ZRANGE', index, '+inf', floor, 'BYSCORE', 'REV', 'LIMIT', offset, count,
    'WITHSCORES')
end

-- The library's whole surface. Names carry the contract version; see the header.
redis.register_function{function_name = 'pyhistory_v4_append', callback = append}
-- window and touch write only a TTL, which takes no memory to speak of: allow-oom lets a chat read
-- its history while the server is out of memory under the noeviction policy, as LRANGE could.
redis.register_function{
  function_name = 'pyhistory_v4_window', callback = window, flags = {'allow-oom'}}
redis.register_function{
  function_name = 'pyhistory_v4_window_ro', callback = window_ro, flags = {'no-writes'}}
redis.register_function{
  function_name = 'pyhistory_v4_touch', callback = touch, flags = {'allow-oom'}}
redis.register_function{
  function_name = 'pyhistory_v4_length', callback = length, flags = {'no-writes'}}
redis.register_function{function_name = 'pyhistory_v4_compact', callback = compact}
redis.register_function{function_name = 'pyhistory_v4_edit', callback = edit}
redis.register_function{function_name = 'pyhistory_v4_clear', callback = clear}
redis.register_function{function_name = 'pyhistory_v4_sessions', callback = sessions}
