#!lua name=pyhistory_checkpoint_v5
--[[
pyhistory_checkpoint: LangGraph checkpoints in Redis, two keys per thread, one call per operation.

Data layout. Each thread has two keys, built by the caller and passed in KEYS; both carry the same
hash tag (made from an encoding of the thread id), so Redis Cluster keeps them on one node:
  KEYS[1]  data   HASH, every record of the thread, by field:
    c<0><ns><0><id>                  a checkpoint's record (below), packed with cmsgpack
    k<0><ns><0><id>                  the checkpoint itself, typed, without its channel values
    m<0><ns><0><id>                  its metadata, typed
    b<0><ns><0><channel><0><version> a channel's value at that version: a typed value
    w<0><ns><0><id><0><task><0><idx> a pending write: task<0>path<0>channel<0>typed value
    n<0><ns><0><channel><0><version> how many (v2) records name that value; it goes at 0
    o                                the owner epoch of a claimed thread (write fencing)
    s                                the thread's bytes, as retention by bytes counts them: the
                                     c, k and m fields of every indexed checkpoint and every
                                     counted b field (pending writes and uncounted v1 values
                                     are not counted); kept by the calls of this library only
  KEYS[2]  index  ZSET, all scores 0, ordered by member (lexicographically):
    c<0><ns><0><id>                  one per checkpoint: a namespace's checkpoints in id order
    w<0><ns><0><id><0><path><0><task><0><idx>
                                     one per pending write: a checkpoint's writes in the order
                                     (task path, task id, idx) that LangGraph replays them in
    f<0><ns><0><id><0><floor>        a checkpoint whose floor (below) is not its own id
    r<0><run><0><ns><0><id>          a checkpoint of a run (delete_run)
    p<0><ns><0><id>                  a pinned checkpoint: pending writes no child has applied yet
                                     (put_writes adds it, the put of a child removes it)
    a<0><ns><0><id>                  a checkpoint that has a child (put adds it): a pin of it
                                     that writes arriving after the child's put added is stale
  <0> is a NUL byte; <ns> the checkpoint namespace, <id> the checkpoint id (ids grow with time, so
  their byte order is their age order), <idx> the write's index as 10 decimal digits after adding
  2^31 (so that the special negative indexes sort first). A typed value is the serializer's type
  name, a NUL byte, and the serialized bytes; this library never looks inside one.
  Namespaces, ids, channels, versions, task ids and paths hold no NUL and no 0xFF byte (UTF-8 has
  none): that keeps every range of the index exact.

A checkpoint's record holds what this library reads of it (the checkpoint and its metadata, the
larger part, are fields of their own), a msgpack array of:
  [1] the parent checkpoint id, or ""
  [2] {channel, version, ...}: all the channel versions of the checkpoint (its blobs are read by
  these)
  [3] {key, value, ...}: the metadata filter index, each top-level metadata key with the canonical
  JSON of its value (list filters compare these strings)
  [4] {channel, holder, ...}: for each DeltaChannel this checkpoint stores no value of, the id of the
  oldest ancestor its value is rebuilt from
  [5] the floor: the oldest id in [4], or the checkpoint's own id. Retention never removes a
  checkpoint at or above a kept one's floor.
  [6] 1: the values it names are counted in the n fields (v1 records stop at [5]; their values
  are never counted, so retention leaves them for the thread's TTL, delete or prune)
  [7] the run id, or ""

Values beside the calls. Large values never cross into Lua (turning an argument or a value read
into a Lua string costs several times the plain command that stores it). A put's values (b
fields) are written by a plain HSET in the same MULTI/EXEC as the put call, before it. Writing a
b field that exists writes the same bytes again (a version names one value). When the call is
rejected, the transaction still applies the HSET: its fields are orphans no record names, so no
read returns them, and they go with the thread (TTL, delete_thread). Callers that need no check
on the server (no owner epoch) may write everything a put or put_writes writes with plain
commands in one MULTI/EXEC instead, with the same fields, members and values; with retention
they end the transaction with retain, which indexes and counts the checkpoint once, or, when
the transaction indexed and counted it itself, with trim (retention alone).

Expiry: with a TTL, every write sets it on both keys together, so no key of a thread outlives the
other; reads may refresh it too (get). Retention (keep_last, age, bytes) trims a namespace
inside put, retain or trim, never cutting a pinned checkpoint or what a kept checkpoint's
DeltaChannels need.

Work per call (a function blocks the server while it runs), at most:
  list      SCAN_BUDGET (1,000) checkpoints examined per page; a cursor goes on
  put, retain, trim  MAX_TRIM (1,000) checkpoints removed, SCAN_BUDGET pins and floors read per
            round; with max_bytes, only while over budget, also up to MAX_TRIM candidate records read
            (one HGET and at most one HSTRLEN per channel version of each)
  prune     PRUNE_NAMESPACES (100) namespaces, MAX_TRIM checkpoints removed; a cursor goes on
  delete_run  MAX_TRIM checkpoints; called again while there are more
  delta     DELTA_BUDGET (250) ancestors walked (each: its record, one HGET per channel still
            without a seed, its pending writes); a cursor goes on
  copy, export  about COPY_BUDGET (1,000) fields (HSCAN's COUNT is a hint: a few more, or a whole
            small hash in its compact encoding), then at most COPY_BUDGET index members, with
            their values (so up to COPY_BUDGET times the largest value); a cursor goes on
  import    MAX_ITEMS (100,000) fields: an export page always fits
  get, put, put_writes, claim  one checkpoint's fields and writes

Versioning: the library and every function carry the contract version (v5). Any change to this
file ships under a new version (pyhistory_checkpoint_v6, ...), so two releases loaded on one
server never replace each other's code. v2 reads and writes v1's layout (its fields and members
are a superset): v1 and v2 processes can share threads during a rollout, except that v1 writers
neither count values nor remove pins, so run retention (keep_last, max_age) only once every
writer of a thread is v2. v3 has v2's layout and arguments; its retention without max_bytes
leaves BYTES as it is (neither the checkpoints it removes nor, through retain, the ones it
indexes are counted), and reads the pending writes of the checkpoints one trim removes with
one range of the index. v4 has v3's layout; its delta takes the walk the caller holds
(and replies the ancestors it walked), so v3 and v4 processes share threads. v5 has v4's layout
and arguments, and trim (retention alone, after plain commands that index and count); a trim
counts its victims' values down together (one HMGET, one HSET, and their deletions in the
trim's one HDEL), and with keep_last finds the cut and its victims with one range; retain sent
again drops the "has a child" entry of a parent its first sending trimmed; v4 and v5
processes share threads.

Errors: every argument is checked before the first write. A violation is an error reply
"CODE message" with one of these code words:
  BADARGS    wrong number of keys or arguments, or a count that does not match them
  BADSIZE    a count (keep_last, limit) that is not an integer in its range
  BADTTL     a TTL that is not an integer number of seconds in [0, MAX_INT]
  BADID      an id, namespace, channel, version, task or path that is empty where it may not be,
             or holds a NUL or 0xFF byte; a write index that is not a canonical integer
  BADVALUE   a typed value without the NUL byte after its type name
  WRONGTYPE  a key of the thread holds another Redis type (refused before anything is written)
  STALEOWNER  a write carrying an owner epoch that is no longer the thread's (see claim)
]]

local MAX_INT = 2147483647 -- largest count or TTL accepted
local IDX_OFFSET = 2147483648 -- added to a write index so that its digits sort in number order
local MAX_ITEMS = 100000 -- most channels, blobs, filters or writes one call may carry
local CHUNK = 500 -- fields per HSET/HMGET/HDEL/ZADD: keeps unpack() within Lua's stack limit
local SCAN_BUDGET = 1000 -- most checkpoints one list call examines before it hands back a cursor
local MAX_TRIM = 1000 -- most checkpoints one put or prune removes (the rest go on the next call)
local TRIM_WINDOW = 64 -- most victims a keep_last trim takes from the range that finds its cut
local PRUNE_NAMESPACES = 100 -- most namespaces one prune call examines (a cursor goes on)
local DELTA_BUDGET = 250 -- most ancestors one delta call walks (a cursor goes on)
local COPY_BUDGET = 1000 -- most fields, then index members, one copy or export call reads

local NUL = '\0'
local OWNER = 'o' -- the data hash's field holding the owner epoch (see claim)
local BYTES = 's' -- the data hash's field holding the thread's counted bytes (retention)
local TOP = '\255' -- above every byte a name may hold: closes a range of the index

-- An error reply "CODE message", returned (not raised) so the client gets it as written.
local function bad(code, message)
  return redis.error_reply(code .. ' ' .. message)
end

local function shown(value)
  return string.format('%q', string.sub(value, 1, 24))
end

-- A non-negative integer argument in plain decimal digits, or nil.
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

local function not_whole(code, name, value)
  return bad(code, name .. ' must be an integer in [0, ' .. MAX_INT .. '], got ' .. shown(value))
end

-- A name stored between NUL separators: nil when valid, else the error reply.
local function bad_name(name, value, may_be_empty)
  if #value == 0 and not may_be_empty then
    return bad('BADID', name .. ' must not be empty')
  end
  if string.find(value, '[%z\255]') then
    return bad('BADID', name .. ' must hold no NUL or 0xFF byte, got ' .. shown(value))
  end
  return nil
end

local function bad_typed(name, value)
  if (string.find(value, NUL, 1, true) or 1) < 2 then
    return bad('BADVALUE', name .. ' must be "<type name>\\0<bytes>", got ' .. shown(value))
  end
  return nil
end

-- Byte-wise "a sorts before b" (Lua's own < follows the server's collation locale).
local function precedes(a, b)
  if a == b then
    return false
  end
  -- Both strings' bytes in two calls (a call per byte costs more than the rest of the walk).
  local x, y = {string.byte(a, 1, -1)}, {string.byte(b, 1, -1)}
  for i = 1, math.min(#x, #y) do
    if x[i] ~= y[i] then
      return x[i] < y[i]
    end
  end
  return #x < #y
end

-- The index holds a sorted set (or nothing), checked before the first write. The data hash needs
-- no check: every function's first write is to it, and Redis refuses that one whole.
local function wrong_types(keys)
  local index = redis.call('TYPE', keys[2])['ok']
  if index ~= 'zset' and index ~= 'none' then
    return bad('WRONGTYPE', 'the thread index must hold a sorted set, got ' .. index)
  end
  return nil
end

local function expire(keys, ttl)
  if ttl > 0 then
    redis.call('EXPIRE', keys[1], ttl)
    redis.call('EXPIRE', keys[2], ttl)
  end
end

-- Call `send` (a function running one command) with a long list of arguments, CHUNK (groups of
-- `step`) at a time; returns the replies of the calls, concatenated.
local function chunked(send, items, step)
  local replies = {}
  local size = CHUNK * (step or 1)
  for first = 1, #items, size do
    local reply = send(unpack(items, first, math.min(first + size - 1, #items)))
    if type(reply) == 'table' then
      for _, value in ipairs(reply) do
        replies[#replies + 1] = value
      end
    end
  end
  return replies
end

local function hmget(key, fields)
  if #fields == 0 then
    return {}
  end
  return chunked(function(...) return redis.call('HMGET', key, ...) end, fields)
end

-- Field and member names (see the layout above).
local function checkpoint_name(ns, id)
  return 'c' .. NUL .. ns .. NUL .. id
end

-- The fields of a checkpoint's own typed values: "k" the checkpoint, "m" its metadata.
local function document_field(kind, ns, id)
  return kind .. NUL .. ns .. NUL .. id
end

local function blob_field(ns, channel, version)
  return 'b' .. NUL .. ns .. NUL .. channel .. NUL .. version
end

local function writes_prefix(ns, id)
  return 'w' .. NUL .. ns .. NUL .. id .. NUL
end

-- A blob's reference count: how many stored (v2) records name it.
local function counter_field(ns, channel, version)
  return 'n' .. NUL .. ns .. NUL .. channel .. NUL .. version
end

-- The total length of some fields of the data hash (0 for a missing one).
local function lengths(data, fields)
  local total = 0
  for _, field in ipairs(fields) do
    total = total + redis.call('HSTRLEN', data, field)
  end
  return total
end

-- A checkpoint's own fields, as counted in BYTES: its record, the checkpoint, its metadata.
local function own_fields(ns, id)
  return {checkpoint_name(ns, id), document_field('k', ns, id), document_field('m', ns, id)}
end

local function add_bytes(data, n)
  if n ~= 0 then
    redis.call('HINCRBY', data, BYTES, n)
  end
end

-- Index members beside the checkpoints' and the writes': a checkpoint whose DeltaChannels are
-- rebuilt from an older one (its floor), a checkpoint of a run, a pinned checkpoint.
local function floor_name(ns, floor, id)
  return 'f' .. NUL .. ns .. NUL .. id .. NUL .. floor
end

local function run_name(run, ns, id)
  return 'r' .. NUL .. run .. NUL .. ns .. NUL .. id
end

local function pinned_name(ns, id)
  return 'p' .. NUL .. ns .. NUL .. id
end

-- A checkpoint that has a child: its pending writes are applied (a pin of it is stale).
local function parent_name(ns, id)
  return 'a' .. NUL .. ns .. NUL .. id
end

-- "c<0>ns<0>id" -> ns, id
local function split_checkpoint(member)
  local sep = string.find(member, NUL, 3, true)
  return string.sub(member, 3, sep - 1), string.sub(member, sep + 1)
end

-- A pending write's field from its index member: the prefix, then task<0>idx without the path.
local function write_field(prefix, member)
  local rest = string.sub(member, #prefix + 1)
  return prefix .. string.sub(rest, string.find(rest, NUL, 1, true) + 1)
end

local function record(data, ns, id)
  local packed = redis.call('HGET', data, checkpoint_name(ns, id))
  if not packed then
    return nil
  end
  return cmsgpack.unpack(packed)
end

-- {ch = value} from a flat {ch, value, ...}
local function as_map(flat)
  local map = {}
  for i = 1, #flat, 2 do
    map[flat[i]] = flat[i + 1]
  end
  return map
end

-- The index members and data fields of a checkpoint's pending writes, in replay order.
local function pending_writes(index, ns, id)
  local prefix = writes_prefix(ns, id)
  local members = redis.call('ZRANGEBYLEX', index, '[' .. prefix, '(' .. prefix .. TOP)
  local fields = {}
  for i, member in ipairs(members) do
    fields[i] = write_field(prefix, member)
  end
  return members, fields
end

-- What get and list return for one checkpoint:
-- {ns, id, parent, checkpoint, metadata, {channel, value, ...}, {write, ...}}
local function entry(data, index, ns, id, rec, known)
  local channels = rec[2]
  local fields, names = {document_field('k', ns, id), document_field('m', ns, id)}, {}
  local blobs = {}
  for i = 1, #channels, 2 do
    if known and known[channels[i]] == channels[i + 1] then
      blobs[#blobs + 1] = channels[i] -- the caller holds this value: "" stands for it
      blobs[#blobs + 1] = ''
    else
      fields[#fields + 1] = blob_field(ns, channels[i], channels[i + 1])
      names[#names + 1] = channels[i]
    end
  end
  local values = hmget(data, fields)
  for i = 1, #names do
    local value = values[i + 2]
    if value then
      blobs[#blobs + 1] = names[i]
      blobs[#blobs + 1] = value
    end
  end
  local _, write_fields = pending_writes(index, ns, id)
  local writes = {}
  for _, value in ipairs(hmget(data, write_fields)) do
    if value then
      writes[#writes + 1] = value
    end
  end
  return {ns, id, rec[1], values[1] or '', values[2] or '', blobs, writes}
end

-- The records of checkpoints given by their index members (which are their record fields), in
-- one HMGET: a list aligned with `members`, false where a record is missing.
local function records(data, members)
  local found = {}
  for i, packed in ipairs(hmget(data, members)) do
    found[i] = packed and cmsgpack.unpack(packed) or false
  end
  return found
end

-- Add `delta` (1 or -1) to the reference counts of the blobs named by `versions` (channel,
-- version pairs: a record's, or several records' one after another, so a pair may come more
-- than once: each time counts), and delete every blob (with its count) whose count drops to 0:
-- at once, or, given `dropped`, by adding its fields there for the caller's HDEL. `fresh` holds
-- the blob fields whose missing count starts from 0: put's, the values it wrote; retain's, every
-- value its checkpoint names (as the plain commands' HINCRBY do), so a v1 value (written
-- uncounted by v1 of this library) that a v2 checkpoint names is counted from then on. Any
-- other blob with no count is never counted, so never deleted here. `unsized`: leave BYTES as
-- it is (the caller counts no bytes: retention without max_bytes).
local function count_references(data, ns, versions, delta, fresh, unsized, dropped)
  if #versions == 0 then
    return
  end
  local blobs, counters, deltas, at = {}, {}, {}, {}
  for i = 1, #versions, 2 do
    local counter = counter_field(ns, versions[i], versions[i + 1])
    local k = at[counter]
    if k then
      deltas[k] = deltas[k] + delta
    else
      k = #counters + 1
      at[counter] = k
      counters[k] = counter
      blobs[k] = blob_field(ns, versions[i], versions[i + 1])
      deltas[k] = delta
    end
  end
  local counts = hmget(data, counters)
  local set, drop, bytes = {}, dropped or {}, 0
  for i, counter in ipairs(counters) do
    local n = counts[i] and tonumber(counts[i])
    if not n and fresh and fresh[blobs[i]] then
      n = 0
      if not unsized then
        bytes = bytes + redis.call('HSTRLEN', data, blobs[i]) -- counted from now on
      end
    end
    if n then
      n = n + deltas[i]
      if n > 0 then
        set[#set + 1] = counter
        set[#set + 1] = n
      else
        drop[#drop + 1] = counter
        drop[#drop + 1] = blobs[i]
        if not unsized then
          bytes = bytes - redis.call('HSTRLEN', data, blobs[i])
        end
      end
    end
  end
  add_bytes(data, bytes)
  if #set > 0 then
    chunked(function(...) return redis.call('HSET', data, ...) end, set, 2)
  end
  if #drop > 0 and not dropped then
    chunked(function(...) return redis.call('HDEL', data, ...) end, drop)
  end
end

-- Remove checkpoints (index members "c<0>ns<0>id") with their pending writes, their index
-- entries, and the blobs no stored record names any more. A v2 record's blobs go by their
-- reference counts; a v1 record's (uncounted) blobs go when none of `kept` (the records that
-- stay, given by prune) names them, and stay when `kept` is nil. `run`: the victims are every
-- checkpoint of the namespace from the first to the last of them (retention's trim), so their
-- pending writes are read with one range of the index. `unsized`: BYTES is left as it is.
local function remove(data, index, ns, victims, kept, run, unsized)
  local referenced = nil
  if kept then
    referenced = {}
    for _, rec in ipairs(kept) do
      if rec then
        local channels = rec[2]
        for i = 1, #channels, 2 do
          referenced[blob_field(ns, channels[i], channels[i + 1])] = true
        end
      end
    end
  end
  local fields, members, bytes = {}, {}, 0
  local writes = nil -- with `run`: victim id -> its pending writes' index members
  if run and #victims > 0 then
    writes = {}
    local _, first = split_checkpoint(victims[1])
    local _, last = split_checkpoint(victims[#victims])
    local skip = #writes_prefix(ns, '') - 1 -- w<0>ns<0>
    local found = redis.call('ZRANGEBYLEX', index, '[' .. writes_prefix(ns, first),
      '(' .. writes_prefix(ns, last) .. TOP)
    for _, member in ipairs(found) do
      local id = string.sub(member, skip + 1, string.find(member, NUL, skip + 1, true) - 1)
      local of = writes[id]
      if not of then
        of = {}
        writes[id] = of
      end
      of[#of + 1] = member
    end
  end
  local counted = {} -- the channel versions of the victims' v2 records, one after another
  for v, rec in ipairs(records(data, victims)) do
    local member = victims[v]
    local _, id = split_checkpoint(member)
    if not unsized then
      bytes = bytes + lengths(data, own_fields(ns, id))
    end
    if rec and rec[6] == 1 then
      local versions = rec[2]
      for i = 1, #versions do
        counted[#counted + 1] = versions[i]
      end
    elseif rec and referenced then
      local channels = rec[2]
      for i = 1, #channels, 2 do
        local field = blob_field(ns, channels[i], channels[i + 1])
        if not referenced[field] then
          referenced[field] = true -- once is enough
          fields[#fields + 1] = field
        end
      end
    end
    if rec and rec[5] ~= id then
      members[#members + 1] = floor_name(ns, rec[5], id)
    end
    if rec and rec[7] and rec[7] ~= '' then
      members[#members + 1] = run_name(rec[7], ns, id)
    end
    fields[#fields + 1] = member
    fields[#fields + 1] = document_field('k', ns, id)
    fields[#fields + 1] = document_field('m', ns, id)
    members[#members + 1] = member
    members[#members + 1] = pinned_name(ns, id)
    members[#members + 1] = parent_name(ns, id)
    if writes then
      local prefix = writes_prefix(ns, id)
      for _, write in ipairs(writes[id] or {}) do
        members[#members + 1] = write
        fields[#fields + 1] = write_field(prefix, write)
      end
    else
      local write_members, write_fields = pending_writes(index, ns, id)
      for i = 1, #write_members do
        members[#members + 1] = write_members[i]
        fields[#fields + 1] = write_fields[i]
      end
    end
  end
  count_references(data, ns, counted, -1, nil, unsized, fields)
  if #fields > 0 then
    chunked(function(...) return redis.call('HDEL', data, ...) end, fields)
    chunked(function(...) return redis.call('ZREM', index, ...) end, members)
  end
  add_bytes(data, -bytes)
end

-- The cut retention by bytes asks for in a namespace: the id of the oldest checkpoint that
-- stays once the oldest ones (at most MAX_TRIM, never the newest) are removed until the
-- thread's counted bytes are within `max_bytes`; nil when they are within it already. Each
-- candidate frees its own fields and the values whose count it would take to 0.
local function bytes_cut(data, index, ns, max_bytes)
  local over = (tonumber(redis.call('HGET', data, BYTES)) or 0) - max_bytes
  if over <= 0 then
    return nil
  end
  local low, high = '[' .. checkpoint_name(ns, ''), '(' .. checkpoint_name(ns, TOP)
  local oldest = redis.call('ZRANGEBYLEX', index, low, high, 'LIMIT', 0, MAX_TRIM + 1)
  local taken = {} -- counter field -> how many candidates name it
  for i = 1, #oldest - 1 do -- the newest of these stays (and the namespace's newest always)
    local _, id = split_checkpoint(oldest[i])
    over = over - lengths(data, own_fields(ns, id))
    local rec = record(data, ns, id)
    if rec and rec[6] == 1 then
      local versions = rec[2]
      for v = 1, #versions, 2 do
        local counter = counter_field(ns, versions[v], versions[v + 1])
        taken[counter] = (taken[counter] or 0) + 1
        if tonumber(redis.call('HGET', data, counter) or '0') == taken[counter] then
          over = over - redis.call('HSTRLEN', data, blob_field(ns, versions[v], versions[v + 1]))
        end
      end
    end
    if over <= 0 then
      local _, next_id = split_checkpoint(oldest[i + 1])
      return next_id
    end
  end
  if #oldest < 2 then
    return nil
  end
  local _, last = split_checkpoint(oldest[#oldest])
  return last
end

-- The lowest id retention may cut below in a namespace, given the cut the policy asks for:
-- lowered to every pinned checkpoint (pending writes that no child has applied: an interrupt
-- waiting for its resume, a task's writes before the next checkpoint) and to the floor of every
-- checkpoint that stays (the oldest ancestor its DeltaChannels are rebuilt from), until no
-- checkpoint at or above it needs anything below it. Reads at most SCAN_BUDGET pins and
-- SCAN_BUDGET floors per round (a round per distinct lowering: one or two in practice); with
-- more floors above the cut than that it returns "" (nothing is removed).
local function safe_cut(data, index, ns, cut, pinned)
  local pins = {}
  if pinned then
    pins = redis.call('ZRANGEBYLEX', index, '[' .. pinned_name(ns, ''),
      '(' .. pinned_name(ns, TOP), 'LIMIT', 0, SCAN_BUDGET)
  end
  local skip = #pinned_name(ns, '')
  for _, member in ipairs(pins) do
    local id = string.sub(member, skip + 1)
    if redis.call('ZSCORE', index, parent_name(ns, id)) then
      -- a child was put before these writes arrived (LangGraph sends them concurrently):
      -- nothing waits on them
      redis.call('ZREM', index, member)
    elseif redis.call('HEXISTS', data, checkpoint_name(ns, id)) == 0 then
      -- writes for a checkpoint whose put has not arrived yet (LangGraph sends them
      -- concurrently) or that is gone: the pin stays for the former, lowers nothing now
      local _ = nil
    elseif precedes(id, cut) then
      cut = id
    end
  end
  local prefix = floor_name(ns, '', '')
  prefix = string.sub(prefix, 1, #prefix - 1) -- f<0>ns<0>
  -- The floors of the checkpoints at or above the cut (the server compares the ids); the
  -- lowest of them lowers the cut, which may bring older checkpoints (and floors) in: again.
  local high = '(' .. prefix .. TOP
  for _ = 1, SCAN_BUDGET do
    local floors = redis.call('ZRANGEBYLEX', index, '[' .. prefix .. cut, high,
      'LIMIT', 0, SCAN_BUDGET)
    if #floors == SCAN_BUDGET then
      return '' -- more floors than one call reads: keep everything this time
    end
    local lowest, seen = cut, nil
    for _, member in ipairs(floors) do
      local rest = string.sub(member, #prefix + 1)
      local floor = string.sub(rest, string.find(rest, NUL, 1, true) + 1)
      if floor ~= seen then -- a DeltaChannel's checkpoints share a few floors: compare each once
        seen = floor
        if precedes(floor, lowest) then
          lowest = floor
        end
      end
    end
    if lowest == cut then
      break
    end
    high = '(' .. prefix .. cut
    cut = lowest
  end
  return cut
end

-- Retention in one namespace: remove the checkpoints below the cut that keep_last (the newest
-- `keep`, 0 = no limit) and max_age (`age_cut`: the id of the oldest checkpoint young enough,
-- "" = no limit; the newest checkpoint always stays) and max_bytes (the thread's counted bytes,
-- 0 or nil = no limit, see bytes_cut) ask for, made safe by safe_cut; at most MAX_TRIM per call.
-- Reads no kept record (bytes_cut reads the records of the candidates). Returns how many were
-- removed.
local function trim(data, index, ns, keep, age_cut, by_kept, max_bytes)
  local low, high = '[' .. checkpoint_name(ns, ''), '(' .. checkpoint_name(ns, TOP)
  local cut = nil
  if max_bytes and max_bytes > 0 then
    cut = bytes_cut(data, index, ns, max_bytes)
  end
  -- The keep-th newest, when there is one older than it, with up to TRIM_WINDOW older ones
  -- (newest first): when the cut stays there and they are all, they are the victims.
  local older, kth = {}, nil
  if keep > 0 then
    older = redis.call('ZREVRANGEBYLEX', index, high, low, 'LIMIT', keep - 1, TRIM_WINDOW + 2)
    if #older >= 2 then
      local _, id = split_checkpoint(older[1])
      kth = id
      if not cut or precedes(cut, kth) then
        cut = kth
      end
    end
  end
  if age_cut ~= '' then
    local newest = redis.call('ZREVRANGEBYLEX', index, high, low, 'LIMIT', 0, 1)[1]
    if newest then
      local _, id = split_checkpoint(newest)
      local by_age = precedes(age_cut, id) and age_cut or id
      if not cut or precedes(cut, by_age) then
        cut = by_age
      end
    end
  end
  if not cut then
    return 0
  end
  cut = safe_cut(data, index, ns, cut, not by_kept)
  local victims = {}
  if cut == kth and #older <= TRIM_WINDOW + 1 then
    for i = #older, 2, -1 do
      victims[#victims + 1] = older[i]
    end
  else
    victims = redis.call(
      'ZRANGEBYLEX', index, low, '(' .. checkpoint_name(ns, cut), 'LIMIT', 0, MAX_TRIM)
  end
  if #victims == 0 then
    return 0
  end
  local kept = nil
  if by_kept then -- prune: v1 records' blobs go by what the kept records name
    kept = records(data, redis.call('ZRANGEBYLEX', index, '[' .. checkpoint_name(ns, cut), high,
      'LIMIT', 0, SCAN_BUDGET))
  end
  remove(data, index, ns, victims, kept, true, not by_kept and not (max_bytes and max_bytes > 0))
  return #victims
end

-- Reads `count` then that many groups of `width` arguments from args[at]; returns the items
-- (flat), the position after them, or nil and an error reply.
local function section(args, at, width, name)
  local count = args[at] and whole(args[at])
  if not count or count > MAX_ITEMS or at + count * width > #args then
    return nil, nil, bad('BADARGS', 'bad count of ' .. name .. ': ' .. shown(args[at] or ''))
  end
  local items = {}
  for i = 1, count * width do
    items[i] = args[at + i]
  end
  return items, at + count * width + 1, nil
end

-- Write fencing (opt-in): nil when `epoch` may write to the thread, else the STALEOWNER error
-- reply. A writer that carries an epoch writes only while it is the thread's current one (a
-- claim, a delete or an expiry ends every earlier epoch). A writer that carries none takes no
-- part in fencing and is not checked.
local function fenced(data, epoch)
  if epoch == '' then
    return nil
  end
  local owner = redis.call('HGET', data, OWNER)
  if owner == epoch then
    return nil
  end
  return bad('STALEOWNER', 'epoch ' .. shown(epoch) .. ' no longer owns the thread (' ..
    (owner and ('epoch ' .. owner .. ' does') or 'it was deleted or expired') .. ')')
end

--[[
put: record a checkpoint whose channel values were written beside this call; index it; trim; set
the TTL.
  The values (blob fields b<0>ns<0>channel<0>version, see the layout) never cross into Lua: the
  caller writes them with a plain HSET queued in the same MULTI/EXEC, before this call. A version
  names one value, so writing a blob field that exists writes the same bytes again. When this
  call is rejected the transaction still applies that HSET: its blob fields are orphans that no
  record names, so no read ever returns them; they go with the thread (its TTL, delete_thread).
  Every other change happens here, after every check, or not at all.
  KEYS[1], KEYS[2]  the thread's data hash and index sorted set
  ARGV[1]   ttl: EXPIRE both keys after this many seconds; 0 = leave the TTL as it is
  ARGV[2]   keep_last: keep the newest N checkpoints of the namespace; 0 = keep all
  ARGV[3]   age cut: remove the checkpoints of the namespace with an id below this one (the
            caller's id for "max_age ago"; ids grow with time); "" = no age limit
  ARGV[4]   max_bytes: remove the oldest checkpoints of the namespace while the thread's counted
            bytes (see BYTES in the layout) exceed this; 0 = no limit
  ARGV[5]   owner epoch, or "" (see fenced above and claim)
  ARGV[6]   namespace (may be empty)       ARGV[7]  checkpoint id (not empty)
  ARGV[8]   parent checkpoint id, or ""    ARGV[9]  run id, or "" (indexed for delete_run)
  ARGV[10]  the checkpoint, typed, without its channel values
  ARGV[11]  its metadata, typed
  then four sections, each a count followed by that many groups:
    versions  channel version   every channel version of the checkpoint
    blobs     channel version   the values this transaction wrote (names only)
    filters   key json          the metadata filter index (see the layout)
    deltas    channel           the DeltaChannels this checkpoint stores no value of
  Retention (keep_last, age, bytes) never removes a pinned checkpoint or what a kept one's DeltaChannels
  are rebuilt from (see safe_cut); the newest checkpoint always stays.
  reply     integer: how many old checkpoints retention removed
  errors    BADARGS, BADSIZE, BADTTL, BADID, BADVALUE, WRONGTYPE, STALEOWNER
]]
local function put(keys, args)
  if #keys ~= 2 or #args < 15 then
    return bad('BADARGS', 'expected 2 keys and at least 15 arguments: ttl keep_last age_cut ' ..
      'max_bytes epoch ns id parent run checkpoint metadata versions... blobs... filters... ' ..
      'deltas...')
  end
  local ttl = whole(args[1])
  if not ttl then return not_whole('BADTTL', 'ttl', args[1]) end
  local keep = whole(args[2])
  if not keep then return not_whole('BADSIZE', 'keep_last', args[2]) end
  local max_bytes = whole(args[4])
  if not max_bytes then return not_whole('BADSIZE', 'max_bytes', args[4]) end
  local age_cut, epoch, ns, id, parent, run = args[3], args[5], args[6], args[7], args[8], args[9]
  local err = bad_typed('checkpoint', args[10]) or bad_typed('metadata', args[11])
  if err then return err end
  local versions, blobs, filters, deltas, at
  versions, at, err = section(args, 12, 2, 'versions')
  if err then return err end
  blobs, at, err = section(args, at, 2, 'blobs')
  if err then return err end
  filters, at, err = section(args, at, 2, 'filters')
  if err then return err end
  deltas, at, err = section(args, at, 1, 'deltas')
  if err then return err end
  if at <= #args then
    return bad('BADARGS', (#args - at + 1) .. ' arguments after the last section')
  end
  -- Every name at once: one search over them all (a search per name costs more than the rest
  -- of a put); only a put that fails it is checked name by name, for the message.
  local names, empty = {age_cut, epoch, ns, id, parent, run}, #id == 0
  for _, list in ipairs({versions, blobs, deltas}) do
    for i = 1, #list do
      names[#names + 1] = list[i]
      empty = empty or #list[i] == 0
    end
  end
  for i = 1, #filters, 2 do
    names[#names + 1] = filters[i]
  end
  if empty or string.find(table.concat(names), '[%z\255]') then
    err = bad_name('age cut', age_cut, true) or bad_name('epoch', epoch, true)
      or bad_name('checkpoint_ns', ns, true) or bad_name('checkpoint_id', id)
      or bad_name('parent checkpoint_id', parent, true) or bad_name('run_id', run, true)
    if err then return err end
    for i = 1, #versions do
      err = bad_name(i % 2 == 1 and 'channel' or 'version', versions[i])
      if err then return err end
    end
    for i = 1, #blobs do
      err = bad_name(i % 2 == 1 and 'channel' or 'version', blobs[i])
      if err then return err end
    end
    for i = 1, #filters, 2 do
      err = bad_name('metadata key', filters[i], true)
      if err then return err end
    end
    for i = 1, #deltas do
      err = bad_name('channel', deltas[i])
      if err then return err end
    end
  end
  err = wrong_types(keys) or fenced(keys[1], epoch)
  if err then return err end

  -- Where each DeltaChannel without a stored value is rebuilt from: the parent's holder for it,
  -- else the parent itself (it stores the value, or the channel began there).
  local holders, floor = {}, id
  if #deltas > 0 then
    local parent_holders = {}
    local parent_record = parent ~= '' and record(keys[1], ns, parent)
    if parent_record then
      parent_holders = as_map(parent_record[4])
    end
    for _, channel in ipairs(deltas) do
      local holder = parent_record and (parent_holders[channel] or parent) or id
      holders[#holders + 1] = channel
      holders[#holders + 1] = holder
      if precedes(holder, floor) then
        floor = holder
      end
    end
  end

  local name = checkpoint_name(ns, id)
  local fresh = {}
  for i = 1, #blobs, 2 do
    fresh[blob_field(ns, blobs[i], blobs[i + 1])] = true
  end
  count_references(keys[1], ns, versions, 1, fresh)
  local before = lengths(keys[1], own_fields(ns, id))
  local old = record(keys[1], ns, id)
  if old then -- stored again (a retried put, a copy): its old entries go (after the new counts)
    local gone = {}
    if old[6] == 1 then
      count_references(keys[1], ns, old[2], -1, nil)
    end
    if old[5] ~= id then
      gone[#gone + 1] = floor_name(ns, old[5], id)
    end
    if old[7] and old[7] ~= '' then
      gone[#gone + 1] = run_name(old[7], ns, id)
    end
    if #gone > 0 then
      redis.call('ZREM', keys[2], unpack(gone))
    end
  end
  redis.call('HSET', keys[1],
    name, cmsgpack.pack({parent, versions, filters, holders, floor, 1, run}),
    document_field('k', ns, id), args[10],
    document_field('m', ns, id), args[11])
  add_bytes(keys[1], lengths(keys[1], own_fields(ns, id)) - before)
  local members = {0, name}
  if floor ~= id then
    members[#members + 1] = 0
    members[#members + 1] = floor_name(ns, floor, id)
  end
  if run ~= '' then
    members[#members + 1] = 0
    members[#members + 1] = run_name(run, ns, id)
  end
  redis.call('ZADD', keys[2], unpack(members))
  if parent ~= '' then -- the parent's pending writes are applied in this checkpoint
    redis.call('ZREM', keys[2], pinned_name(ns, parent))
    redis.call('ZADD', keys[2], 0, parent_name(ns, parent))
  end
  local removed = 0
  if keep > 0 or age_cut ~= '' or max_bytes > 0 then
    removed = trim(keys[1], keys[2], ns, keep, age_cut, false, max_bytes)
  end
  expire(keys, ttl)
  return removed
end

--[[
retain: index and count a checkpoint the caller wrote with plain commands in the same MULTI/EXEC
(before this call: its record, documents and values, its other index entries), then apply
retention in its namespace as put does. The checkpoint's own index entry is added here, with
NX: its values' reference counts go up only when it is new, so a transaction sent again (a
reply lost, the library loaded again) counts nothing twice; when it finds the entry there, the
first transaction's trim may have removed the parent, and the parent's "has a child" entry,
which this one added back, goes again.
  KEYS[1], KEYS[2]  the thread's data hash and index sorted set
  ARGV[1]   keep_last, as for put       ARGV[2]  age cut, as for put
  ARGV[3]   max_bytes, as for put
  ARGV[4]   namespace                   ARGV[5]  checkpoint id
  ARGV[6..] pairs channel version: every channel version of the checkpoint
  With max_bytes, the checkpoint's bytes (its c, k and m fields, and the values it is the
  first to name) are added to the thread's BYTES once, with its index entry; without, BYTES
  is left as it is, as by the trim.
  reply     integer: how many checkpoints retention removed
  errors    BADARGS, BADSIZE, BADID, WRONGTYPE
]]
local function retain(keys, args)
  if #keys ~= 2 or #args < 5 or #args % 2 ~= 1 then
    return bad('BADARGS', 'expected 2 keys and 5 + 2n arguments: keep_last age_cut max_bytes ' ..
      'ns id (channel version)...')
  end
  local keep = whole(args[1])
  if not keep then return not_whole('BADSIZE', 'keep_last', args[1]) end
  local max_bytes = whole(args[3])
  if not max_bytes then return not_whole('BADSIZE', 'max_bytes', args[3]) end
  local ns, id = args[4], args[5]
  local err = bad_name('age cut', args[2], true) or bad_name('checkpoint_ns', ns, true)
    or bad_name('checkpoint_id', id) or wrong_types(keys)
  if err then return err end
  local versions = {}
  for i = 6, #args do
    versions[#versions + 1] = args[i]
  end
  if redis.call('ZADD', keys[2], 'NX', 0, checkpoint_name(ns, id)) == 1 then
    local fresh = {}
    for i = 1, #versions, 2 do
      fresh[blob_field(ns, versions[i], versions[i + 1])] = true
    end
    count_references(keys[1], ns, versions, 1, fresh, max_bytes == 0)
    if max_bytes > 0 then
      add_bytes(keys[1], lengths(keys[1], own_fields(ns, id)))
    end
  else -- sent again: the parent's "has a child" entry goes with a parent the first trimmed
    local rec = record(keys[1], ns, id)
    local parent = rec and rec[1] or ''
    if parent ~= '' and redis.call('HEXISTS', keys[1], checkpoint_name(ns, parent)) == 0 then
      redis.call('ZREM', keys[2], parent_name(ns, parent))
    end
  end
  if keep == 0 and args[2] == '' and max_bytes == 0 then
    return 0
  end
  return trim(keys[1], keys[2], ns, keep, args[2], false, max_bytes)
end

--[[
trim: retention alone (keep_last, age) in one namespace, as put and retain apply it, for a
transaction that wrote, indexed and counted a checkpoint with plain commands (ZADD, HINCRBY)
before this call. Retention by bytes is retain's (it counts a checkpoint's bytes as it indexes
it). A transaction with this call, sent again after its reply was lost, would count its values
twice: the caller sends retain's form of it instead.
  KEYS[1], KEYS[2]  the thread's data hash and index sorted set
  ARGV[1]   keep_last, as for put       ARGV[2]  age cut, as for put
  ARGV[3]   namespace
  reply     integer: how many checkpoints retention removed
  errors    BADARGS, BADSIZE, BADID, WRONGTYPE
]]
local function retention(keys, args)
  if #keys ~= 2 or #args ~= 3 then
    return bad('BADARGS', 'expected 2 keys and 3 arguments: keep_last age_cut ns')
  end
  local keep = whole(args[1])
  if not keep then return not_whole('BADSIZE', 'keep_last', args[1]) end
  local err = bad_name('age cut', args[2], true) or bad_name('checkpoint_ns', args[3], true)
    or wrong_types(keys)
  if err then return err end
  if keep == 0 and args[2] == '' then
    return 0
  end
  return trim(keys[1], keys[2], args[3], keep, args[2], false, 0)
end

--[[
put_writes: store a task's pending writes against a checkpoint; pin it; set the TTL.
  KEYS[1], KEYS[2]  the thread's data hash and index sorted set
  ARGV[1]   ttl, as for put        ARGV[2]  owner epoch, or "", as for put
  ARGV[3]   namespace              ARGV[4]  checkpoint id
  ARGV[5]   task id                ARGV[6]  task path (may be empty)
  ARGV[7..] triples: idx channel value (typed). idx is the write's position in the task's list,
            or a negative number for a special channel (LangGraph's WRITES_IDX_MAP)
  A write whose (task id, idx >= 0) is already stored is left as it was (a retried call stores
  nothing twice); a special write (idx < 0) replaces the stored one. The checkpoint is pinned
  (retention keeps it) until a put names it as its parent: its writes are not applied yet.
  reply     integer: how many writes were stored
  errors    BADARGS, BADTTL, BADID, BADVALUE, WRONGTYPE, STALEOWNER
]]
local function put_writes(keys, args)
  if #keys ~= 2 or #args < 6 or (#args - 6) % 3 ~= 0 or (#args - 6) / 3 > MAX_ITEMS then
    return bad('BADARGS', 'expected 2 keys and 6 + 3n arguments: ttl epoch ns id task path ' ..
      '(idx channel value)...')
  end
  local ttl = whole(args[1])
  if not ttl then return not_whole('BADTTL', 'ttl', args[1]) end
  local epoch, ns, id, task, path = args[2], args[3], args[4], args[5], args[6]
  local err = bad_name('epoch', epoch, true) or bad_name('checkpoint_ns', ns, true)
    or bad_name('checkpoint_id', id) or bad_name('task_id', task, true)
    or bad_name('task_path', path, true)
  if err then return err end
  local indexes = {}
  for i = 7, #args, 3 do
    local idx = args[i]
    local n = tonumber(idx)
    if not (idx == '0' or string.find(idx, '^%-?[1-9]%d*$')) or #idx > 11
        or math.abs(n) > MAX_INT then
      return bad('BADID', 'a write index must be an integer in [-' .. MAX_INT .. ', ' ..
        MAX_INT .. '], got ' .. shown(idx))
    end
    err = bad_name('channel', args[i + 1]) or bad_typed('value of ' .. args[i + 1], args[i + 2])
    if err then return err end
    indexes[#indexes + 1] = string.format('%010d', n + IDX_OFFSET)
  end
  err = wrong_types(keys) or fenced(keys[1], epoch)
  if err then return err end

  local prefix = writes_prefix(ns, id)
  local scored = {0, pinned_name(ns, id)}
  for w, i in ipairs(indexes) do
    local at = 4 + 3 * w
    local field = prefix .. task .. NUL .. i
    local value = task .. NUL .. path .. NUL .. args[at + 1] .. NUL .. args[at + 2]
    local new
    if string.sub(args[at], 1, 1) == '-' then -- a special write replaces the stored one
      local old = redis.call('HGET', keys[1], field)
      if old then -- stored under another path: its index entry goes
        local first = string.find(old, NUL, 1, true)
        local old_path = string.sub(old, first + 1, string.find(old, NUL, first + 1, true) - 1)
        if old_path ~= path then
          redis.call('ZREM', keys[2], prefix .. old_path .. NUL .. task .. NUL .. i)
        end
      end
      redis.call('HSET', keys[1], field, value)
      new = true
    else
      new = redis.call('HSETNX', keys[1], field, value) == 1
    end
    if new then
      scored[#scored + 1] = 0
      scored[#scored + 1] = prefix .. path .. NUL .. task .. NUL .. i
    end
  end
  chunked(function(...) return redis.call('ZADD', keys[2], ...) end, scored, 2)
  local stored = #scored / 2 - 1
  expire(keys, ttl)
  return stored
end

--[[
claim: take write ownership of a thread (write fencing, opt-in): a new epoch, one above the last
(1 for a thread never claimed). From then on a put or put_writes carrying an earlier epoch is
refused with STALEOWNER and writes nothing. Writers that carry no epoch are not fenced.
  KEYS[1], KEYS[2]  the thread's data hash and index sorted set
  ARGV[1]   ttl, as for put
  reply     integer: the new epoch
  errors    BADARGS, BADTTL, WRONGTYPE
]]
local function claim(keys, args)
  if #keys ~= 2 or #args ~= 1 then
    return bad('BADARGS', 'expected 2 keys and 1 argument: ttl')
  end
  local ttl = whole(args[1])
  if not ttl then return not_whole('BADTTL', 'ttl', args[1]) end
  local err = wrong_types(keys)
  if err then return err end
  local epoch = redis.call('HINCRBY', keys[1], OWNER, 1)
  expire(keys, ttl)
  return epoch
end

--[[
delete_run: remove the checkpoints a run wrote to this thread (every namespace), with their
pending writes and the blobs no remaining record names.
  KEYS[1], KEYS[2]  the thread's data hash and index sorted set
  ARGV[1]   run id
  reply     integer: how many checkpoints were removed; at most MAX_TRIM go in one call, so
            call again while the reply is MAX_TRIM
  errors    BADARGS, BADID, WRONGTYPE
]]
local function delete_run(keys, args)
  if #keys ~= 2 or #args ~= 1 then
    return bad('BADARGS', 'expected 2 keys and 1 argument: run_id')
  end
  local run = args[1]
  local err = bad_name('run_id', run) or wrong_types(keys)
  if err then return err end
  local prefix = run_name(run, '', '')
  prefix = string.sub(prefix, 1, #prefix - 1) -- r<0>run<0>
  local members = redis.call('ZRANGEBYLEX', keys[2], '[' .. prefix, '(' .. prefix .. TOP,
    'LIMIT', 0, MAX_TRIM)
  local by_ns, order = {}, {}
  for _, member in ipairs(members) do
    local rest = string.sub(member, #prefix + 1)
    local sep = string.find(rest, NUL, 1, true)
    local ns = string.sub(rest, 1, sep - 1)
    if not by_ns[ns] then
      by_ns[ns] = {}
      order[#order + 1] = ns
    end
    local victims = by_ns[ns]
    victims[#victims + 1] = checkpoint_name(ns, string.sub(rest, sep + 1))
  end
  for _, ns in ipairs(order) do
    remove(keys[1], keys[2], ns, by_ns[ns], nil)
  end
  -- members whose checkpoint was gone already
  if #members > 0 then
    chunked(function(...) return redis.call('ZREM', keys[2], ...) end, members)
  end
  return #members
end


-- The newest checkpoint id of a namespace, or nil.
local function latest(index, ns)
  local newest = redis.call('ZREVRANGEBYLEX', index, '(' .. checkpoint_name(ns, TOP),
    '[' .. checkpoint_name(ns, ''), 'LIMIT', 0, 1)[1]
  if not newest then
    return nil
  end
  local _, id = split_checkpoint(newest)
  return id
end

local function read(keys, ns, id, known)
  if id == '' then
    id = latest(keys[2], ns)
    if not id then
      return nil
    end
  end
  local rec = record(keys[1], ns, id)
  if not rec then
    return nil
  end
  return entry(keys[1], keys[2], ns, id, rec, known)
end

-- The (channel, version) pairs from args[from] on whose values the caller holds: a map
-- channel -> version, or nil and an error reply.
local function known_values(args, from)
  if (#args - from + 1) % 2 ~= 0 then
    return nil, bad('BADARGS', 'known values come in pairs: channel version')
  end
  local known = {}
  for i = from, #args, 2 do
    known[args[i]] = args[i + 1]
  end
  return known, nil
end

--[[
get: one checkpoint (the newest of its namespace, or a given one) with its channel values and its
pending writes; refreshes the thread's TTL (sliding expiry). Flagged allow-oom.
  KEYS[1], KEYS[2]  the thread's data hash and index sorted set
  ARGV[1]   ttl: when > 0 and the checkpoint exists, EXPIRE both keys after this many seconds
  ARGV[2]   namespace               ARGV[3]  checkpoint id, or "" for the newest
  ARGV[4..] pairs channel version: values the caller holds already (a version names one value):
            they are not sent again, which keeps a resumed thread's values out of Lua
  reply     nil when there is no such checkpoint, else
            {ns, id, parent id or "", checkpoint, metadata, {channel, value, ...}, {write, ...}}
            values typed, or "" for a value the caller said it holds; each write is
            task<0>path<0>channel<0>typed value, in replay order
  errors    BADARGS, BADTTL, BADID
]]
local function get(keys, args)
  if #keys ~= 2 or #args < 3 then
    return bad('BADARGS', 'expected 2 keys and 3 + 2n arguments: ttl ns id (channel version)...')
  end
  local ttl = whole(args[1])
  if not ttl then return not_whole('BADTTL', 'ttl', args[1]) end
  local err = bad_name('checkpoint_ns', args[2], true) or bad_name('checkpoint_id', args[3], true)
  if err then return err end
  local known
  known, err = known_values(args, 4)
  if err then return err end
  local found = read(keys, args[2], args[3], known)
  if found then
    expire(keys, ttl)
  end
  return found
end

--[[
get_ro: get without the TTL refresh; flagged no-writes, so FCALL_RO may run it on a replica.
  KEYS[1], KEYS[2]  the thread's data hash and index sorted set
  ARGV[1]   namespace               ARGV[2]  checkpoint id, or "" for the newest
  ARGV[3..] pairs channel version, as for get
  reply     as get
  errors    BADARGS, BADID
]]
local function get_ro(keys, args)
  if #keys ~= 2 or #args < 2 then
    return bad('BADARGS', 'expected 2 keys and 2 + 2n arguments: ns id (channel version)...')
  end
  local err = bad_name('checkpoint_ns', args[1], true) or bad_name('checkpoint_id', args[2], true)
  if err then return err end
  local known
  known, err = known_values(args, 3)
  if err then return err end
  return read(keys, args[1], args[2], known)
end

--[[
list: one page of a thread's checkpoints, newest first, filtered on the server. Flagged no-writes.
  KEYS[1], KEYS[2]  the thread's data hash and index sorted set
  ARGV[1]   scope: "ns" for one namespace, "all" for every namespace of the thread
  ARGV[2]   namespace (with scope "ns"; ignored with "all")
  ARGV[3]   only this checkpoint id, or ""
  ARGV[4]   before: only checkpoints with an id below this one, or ""
  ARGV[5]   cursor: "" for the first page, else the cursor the previous page returned
  ARGV[6]   limit: most checkpoints on this page, at least 1
  ARGV[7..] filter pairs: metadata key, canonical JSON of the value; a checkpoint matches when
            its filter index holds every pair (a missing key matches "null", as Python's
            metadata.get(key) == None does)
  A call examines at most SCAN_BUDGET checkpoints. Its reply is
  {cursor, entry, entry, ...}: each entry as get's reply; cursor "" when the listing is done,
  else what to pass as ARGV[5] to continue (the page may then hold fewer than limit entries).
  errors    BADARGS, BADSIZE, BADID
]]
local function list(keys, args)
  if #keys ~= 2 or #args < 6 or #args % 2 ~= 0 then
    return bad('BADARGS', 'expected 2 keys and 6 + 2n arguments: scope ns id before cursor ' ..
      'limit (key json)...')
  end
  local scope, ns, only, before, cursor = args[1], args[2], args[3], args[4], args[5]
  if scope ~= 'ns' and scope ~= 'all' then
    return bad('BADARGS', 'scope must be "ns" or "all", got ' .. shown(scope))
  end
  local err = bad_name('checkpoint_ns', ns, true) or bad_name('checkpoint_id', only, true)
    or bad_name('before', before, true)
  if err then return err end
  local limit = whole(args[6])
  if not limit or limit == 0 then
    return bad('BADSIZE', 'limit must be an integer in [1, ' .. MAX_INT .. '], got ' ..
      shown(args[6]))
  end
  local base = scope == 'ns' and checkpoint_name(ns, '') or 'c' .. NUL
  if cursor ~= '' and (string.sub(cursor, 1, #base) ~= base or string.find(cursor, TOP, 1, true)) then
    return bad('BADARGS', 'not a cursor of this listing: ' .. shown(cursor))
  end
  local wanted = {}
  for i = 7, #args, 2 do
    wanted[#wanted + 1] = {args[i], args[i + 1]}
  end

  local low, high = '[' .. base, '(' .. base .. TOP
  if cursor ~= '' then
    high = '(' .. cursor
  elseif scope == 'ns' and only ~= '' then
    low, high = '[' .. base .. only, '[' .. base .. only
  elseif scope == 'ns' and before ~= '' then
    high = '(' .. base .. before
  end
  local members = redis.call('ZREVRANGEBYLEX', keys[2], high, low, 'LIMIT', 0, SCAN_BUDGET)
  local reply = {''}
  for _, member in ipairs(members) do
    local member_ns, id = split_checkpoint(member)
    local take = (only == '' or id == only) and (before == '' or precedes(id, before))
    local rec = take and record(keys[1], member_ns, id)
    if rec and #wanted > 0 then
      local index = as_map(rec[3])
      for _, pair in ipairs(wanted) do
        local have = index[pair[1]]
        if have ~= pair[2] and not (have == nil and pair[2] == 'null') then
          rec = nil
          break
        end
      end
    end
    if rec then
      reply[#reply + 1] = entry(keys[1], keys[2], member_ns, id, rec)
      if #reply - 1 == limit then
        reply[1] = member
        return reply
      end
    end
  end
  if #members == SCAN_BUDGET then
    reply[1] = members[#members]
  end
  return reply
end

--[[
prune: keep only the newest checkpoint of each namespace of a thread (and what its DeltaChannels
are rebuilt from), with their pending writes and the values they reference.
  KEYS[1], KEYS[2]  the thread's data hash and index sorted set
  ARGV[1]   ttl, as for put (applied when anything is left)
  ARGV[2]   cursor: "" for the first call, else what the previous call replied
  reply     {removed, cursor}: how many checkpoints this call removed, and "" when the thread is
            done, else the cursor to call again with. One call stops after PRUNE_NAMESPACES
            namespaces or once it removed MAX_TRIM checkpoints (a namespace with more is
            continued by the next call): at most PRUNE_NAMESPACES namespaces examined, each
            reading at most SCAN_BUDGET kept records and removing at most MAX_TRIM.
  errors    BADARGS, BADTTL, WRONGTYPE
]]
local function prune(keys, args)
  if #keys ~= 2 or #args ~= 2 then
    return bad('BADARGS', 'expected 2 keys and 2 arguments: ttl cursor')
  end
  local ttl = whole(args[1])
  if not ttl then return not_whole('BADTTL', 'ttl', args[1]) end
  local cursor = args[2]
  if cursor ~= '' and (string.sub(cursor, 1, 1) ~= 'n' or string.find(cursor, '[%z\255]')) then
    return bad('BADARGS', 'not a cursor of prune: ' .. shown(cursor))
  end
  local err = wrong_types(keys)
  if err then return err end
  local removed, examined = 0, 0
  local after = cursor == '' and '[c' .. NUL or '[' .. checkpoint_name(string.sub(cursor, 2), '')
  while true do
    -- the next namespace: the first checkpoint member above the previous namespace's range
    local first = redis.call(
      'ZRANGEBYLEX', keys[2], after, '(c' .. NUL .. TOP, 'LIMIT', 0, 1)[1]
    if not first then
      break
    end
    local ns = split_checkpoint(first)
    if removed >= MAX_TRIM or examined >= PRUNE_NAMESPACES then
      expire(keys, ttl)
      return {removed, 'n' .. ns}
    end
    local n = trim(keys[1], keys[2], ns, 1, '', true)
    removed, examined = removed + n, examined + 1
    if n >= MAX_TRIM then -- more in this namespace
      expire(keys, ttl)
      return {removed, 'n' .. ns}
    end
    after = '[' .. checkpoint_name(ns, TOP)
  end
  expire(keys, ttl)
  return {removed, ''}
end

-- Merge every field and member of one thread's keys into another's.
-- The kinds of index member (see the layout): what import accepts.
local MEMBER_KINDS = {
  ['c' .. NUL] = true, ['w' .. NUL] = true, ['f' .. NUL] = true, ['r' .. NUL] = true,
  ['p' .. NUL] = true, ['a' .. NUL] = true}

local function merge(data, index, fields, members, ttl)
  local kept = {}
  for i = 1, #fields, 2 do -- the owner epoch is the source's own, not the target's
    if fields[i] ~= OWNER then
      kept[#kept + 1] = fields[i]
      kept[#kept + 1] = fields[i + 1]
    end
  end
  fields = kept
  if #fields > 0 then
    chunked(function(...) return redis.call('HSET', data, ...) end, fields, 2)
  end
  if #members > 0 then
    local scored = {}
    for _, member in ipairs(members) do
      scored[#scored + 1] = 0
      scored[#scored + 1] = member
    end
    chunked(function(...) return redis.call('ZADD', index, ...) end, scored, 2)
  end
  expire({data, index}, ttl)
end

-- A budget argument: an integer in [1, most], or nil.
local function budget_of(value, most)
  local n = whole(value)
  if not n or n == 0 or n > most then
    return nil
  end
  return n
end

local function bad_budget(value, most)
  return bad('BADSIZE', 'budget must be an integer in [1, ' .. most .. '], got ' .. shown(value))
end

-- A cursor of copy and export: "" (start), "h<HSCAN cursor>" (reading the data hash) or
-- "z" / "z<member>" (reading the index after that member).
local function copy_cursor_ok(cursor)
  local kind = string.sub(cursor, 1, 1)
  return cursor == '' or (kind == 'h' and #cursor > 1 and not string.find(cursor, '%D', 2))
    or kind == 'z'
end

-- One page of a thread for copy and export: the data hash first (HSCAN, about `budget` fields:
-- COUNT is a hint the server may exceed by a few fields, or by a whole small hash in its compact
-- encoding), then the index (at most `budget` members, in order). Index members go last so
-- that a reader of the copy finds the fields of every member that is there (the fields of
-- checkpoints written to the source during the copy excepted). Returns the flat fields, the
-- members, and the cursor to continue from ("" when the thread is done).
local function thread_page(data, index, cursor, budget)
  local fields, members = {}, {}
  if string.sub(cursor, 1, 1) ~= 'z' then
    local at = cursor == '' and '0' or string.sub(cursor, 2)
    repeat
      local reply = redis.call('HSCAN', data, at, 'COUNT', budget)
      at = reply[1]
      for _, item in ipairs(reply[2]) do
        fields[#fields + 1] = item
      end
    until at == '0' or #fields >= 2 * budget
    if at ~= '0' then
      return fields, members, 'h' .. at
    end
    cursor = 'z'
  end
  local room = budget - math.floor(#fields / 2)
  if room < 1 then
    return fields, members, cursor
  end
  local low = cursor == 'z' and '-' or '(' .. string.sub(cursor, 2)
  members = redis.call('ZRANGEBYLEX', index, low, '+', 'LIMIT', 0, room)
  if #members == room then
    return fields, members, 'z' .. members[#members]
  end
  return fields, members, ''
end

--[[
copy: merge a thread's checkpoints, values and writes into another thread, a page at a time
(both on this node: on a cluster, threads whose keys hash to different slots go through export
and import). Call again with the cursor until it is "".
  KEYS[1], KEYS[2]  the source thread's data hash and index sorted set
  KEYS[3], KEYS[4]  the target thread's data hash and index sorted set
  ARGV[1]   ttl for the target, as for put
  ARGV[2]   cursor: "" for the first call, else what the previous call replied
  ARGV[3]   budget: about this many fields, then at most this many index members, per call, in
            [1, COPY_BUDGET]
  The data hash is copied before the index, so the target's index names only fields it holds.
  A thread written while it is copied is copied as it was when each page was read.
  reply     the cursor: "" when the thread is done
  errors    BADARGS, BADSIZE, BADTTL, WRONGTYPE
]]
local function copy(keys, args)
  if #keys ~= 4 or #args ~= 3 then
    return bad('BADARGS', 'expected 4 keys and 3 arguments: ttl cursor budget')
  end
  local ttl = whole(args[1])
  if not ttl then return not_whole('BADTTL', 'ttl', args[1]) end
  local cursor = args[2]
  if not copy_cursor_ok(cursor) then
    return bad('BADARGS', 'not a cursor of copy: ' .. shown(cursor))
  end
  local budget = budget_of(args[3], COPY_BUDGET)
  if not budget then return bad_budget(args[3], COPY_BUDGET) end
  local err = wrong_types({keys[1], keys[2]}) or wrong_types({keys[3], keys[4]})
  if err then return err end
  if keys[1] == keys[3] then
    return ''
  end
  local fields, members, next_cursor = thread_page(keys[1], keys[2], cursor, budget)
  merge(keys[3], keys[4], fields, members, ttl)
  return next_cursor
end

--[[
export: one page of a thread's fields and members, for import into a thread on another node.
Flagged no-writes.
  KEYS[1], KEYS[2]  the thread's data hash and index sorted set
  ARGV[1]   cursor: "" for the first call, else what the previous call replied
  ARGV[2]   budget, as for copy
  reply     {cursor, {field, value, ...}, {member, ...}}: cursor "" when the thread is done.
            Import the pages in order (the index comes after the data hash, as for copy).
  errors    BADARGS, BADSIZE
]]
local function export(keys, args)
  if #keys ~= 2 or #args ~= 2 then
    return bad('BADARGS', 'expected 2 keys and 2 arguments: cursor budget')
  end
  local cursor = args[1]
  if not copy_cursor_ok(cursor) then
    return bad('BADARGS', 'not a cursor of export: ' .. shown(cursor))
  end
  local budget = budget_of(args[2], COPY_BUDGET)
  if not budget then return bad_budget(args[2], COPY_BUDGET) end
  local fields, members, next_cursor = thread_page(keys[1], keys[2], cursor, budget)
  return {next_cursor, fields, members}
end

--[[
import: merge what export returned into a thread.
  KEYS[1], KEYS[2]  the target thread's data hash and index sorted set
  ARGV[1]   ttl, as for put        ARGV[2]  n, the count of fields
  ARGV[3..] n (field, value) pairs, then the index members
  reply     integer: how many index members were given
  errors    BADARGS, BADTTL, WRONGTYPE
]]
local function import(keys, args)
  if #keys ~= 2 or #args < 2 then
    return bad('BADARGS', 'expected 2 keys and at least 2 arguments: ttl n (field value)... ' ..
      'member...')
  end
  local ttl = whole(args[1])
  if not ttl then return not_whole('BADTTL', 'ttl', args[1]) end
  local fields, at, err = section(args, 2, 2, 'fields')
  if err then return err end
  local members = {}
  for i = at, #args do
    local kind = string.sub(args[i], 1, 2)
    if not MEMBER_KINDS[kind] then
      return bad('BADARGS', 'not an index member: ' .. shown(args[i]))
    end
    members[#members + 1] = args[i]
  end
  err = wrong_types(keys)
  if err then return err end
  merge(keys[1], keys[2], fields, members, ttl)
  return #members
end

--[[
delta: for each channel, what LangGraph's DeltaChannel rebuilds its value from: the writes to it
along the checkpoint's ancestors, and the nearest ancestor's stored value (the seed). Walks the
parent chain once for all channels, at most `budget` ancestors per call: a longer walk replies
with a cursor, and the caller calls again from there for the channels that have no seed yet.
A caller that holds the result of an earlier walk for the same channels (an agent's next step
walks the same ancestors again, plus the new ones) names it: the walk stops at the first
ancestor it held when every ancestor of the held walk still exists with as many pending writes
as it had (checkpoints are written once; a pending write is never replaced by another to the
same channel, only added or removed with its checkpoint), and the caller adds what it holds.
Flagged no-writes.
  KEYS[1], KEYS[2]  the thread's data hash and index sorted set
  ARGV[1]   namespace               ARGV[2]  checkpoint id, or "" for the newest
  ARGV[3]   cursor: "" to start at the checkpoint's parent, else the ancestor id the previous
            call replied (the walk goes on from it, inclusive; ARGV[2] is then ignored)
  ARGV[4]   budget: most ancestors this call walks, in [1, DELTA_BUDGET]
  ARGV[5]   h, then h pairs ancestor count: the walk the caller holds, its ancestors newest
            first, each with the number of its pending writes; h at most DELTA_BUDGET
  then      n, then n channel names
  then      pairs channel version: values the caller holds (as for get)
  reply     {cursor, held, {ancestor, count, ...}, item, item, ...}: held is 1 when the walk
            ended at the caller's held walk (its seeds and writes come before these), else 0;
            the ancestors this call walked, newest first, each with the number of its pending
            writes; one item per channel, in ARGV order: {seed, write, ...}
            where seed is the typed value, "=" for a value the caller said it holds, or "" when
            none was found (when the cursor is "" and held 0: the walk reached the root without
            one), and the writes (as get returns them) along the ancestors this call walked,
            oldest first. The checkpoint's own pending writes are not included. The cursor is
            "" when the walk is done; else the writes of the next call come before these.
  errors    BADARGS, BADSIZE, BADID
]]

-- The walk a delta caller holds: {{ancestor, count}, ...} and the position after it.
local function held_walk(args, at)
  local h = args[at] and whole(args[at])
  if not h or h > DELTA_BUDGET or at + 2 * h > #args then
    return nil, nil, bad('BADARGS', 'bad count of held ancestors: ' .. shown(args[at] or ''))
  end
  local held = {}
  for i = 1, h do
    local ancestor, count = args[at + 2 * i - 1], args[at + 2 * i]
    local err = bad_name('a held ancestor', ancestor)
    if err then return nil, nil, err end
    local n = whole(count)
    if not n then return nil, nil, not_whole('BADARGS', 'a held write count', count) end
    held[i] = {ancestor, n}
  end
  return held, at + 2 * h + 1, nil
end

-- Whether every ancestor of a held walk is still there with as many pending writes.
local function still_held(data, index, ns, held)
  for _, ancestor in ipairs(held) do
    if redis.call('HEXISTS', data, checkpoint_name(ns, ancestor[1])) == 0 then
      return false
    end
    local prefix = writes_prefix(ns, ancestor[1])
    if redis.call('ZLEXCOUNT', index, '[' .. prefix, '(' .. prefix .. TOP) ~= ancestor[2] then
      return false
    end
  end
  return true
end

local function delta(keys, args)
  if #keys ~= 2 or #args < 6 then
    return bad('BADARGS', 'expected 2 keys and at least 6 arguments: ns id cursor budget h ' ..
      '(ancestor count)... n channel... (channel version)...')
  end
  local ns, id, start = args[1], args[2], args[3]
  local err = bad_name('checkpoint_ns', ns, true) or bad_name('checkpoint_id', id, true)
    or bad_name('cursor', start, true)
  if err then return err end
  local budget = budget_of(args[4], DELTA_BUDGET)
  if not budget then return bad_budget(args[4], DELTA_BUDGET) end
  local held, first, names, at
  held, first, err = held_walk(args, 5)
  if err then return err end
  names, at, err = section(args, first, 1, 'channels')
  if err then return err end
  local known
  known, err = known_values(args, at)
  if err then return err end
  local remaining, left = {}, 0
  for i = first + 1, first + #names do
    err = bad_name('channel', args[i])
    if err then return err end
    if not remaining[args[i]] then
      left = left + 1
    end
    remaining[args[i]] = true
  end
  local seeds, collected = {}, {} -- collected: per ancestor, newest first, writes in order
  local cursor = start
  if start == '' then
    if id == '' then
      id = latest(keys[2], ns)
    end
    local target = id and record(keys[1], ns, id)
    cursor = target and target[1] or ''
  end
  local walked, ancestors, stop, used = 0, {}, held[1] and held[1][1], 0
  while cursor ~= '' and left > 0 and walked < budget do
    if cursor == stop then
      if still_held(keys[1], keys[2], ns, held) then
        used = 1
        cursor = ''
        break
      end
      stop = nil -- changed since: walk on
    end
    walked = walked + 1
    local rec = record(keys[1], ns, cursor)
    if not rec then
      cursor = '' -- an ancestor that is gone ends the walk
      break
    end
    local versions = as_map(rec[2])
    local found = {}
    for channel in pairs(remaining) do
      local version = versions[channel]
      if version and known[channel] == version then
        found[channel] = '='
      elseif version then
        local value = redis.call('HGET', keys[1], blob_field(ns, channel, version))
        if value and string.sub(value, 1, 6) ~= 'empty' .. NUL then
          found[channel] = value
        end
      end
    end
    local members, fields = pending_writes(keys[2], ns, cursor)
    ancestors[#ancestors + 1] = cursor
    ancestors[#ancestors + 1] = #members
    local writes = {}
    for _, value in ipairs(hmget(keys[1], fields)) do
      if value then
        local first_nul = string.find(value, NUL, 1, true)
        local second = string.find(value, NUL, first_nul + 1, true)
        local channel = string.sub(value, second + 1, string.find(value, NUL, second + 1, true) - 1)
        if remaining[channel] then
          writes[#writes + 1] = {channel, value}
        end
      end
    end
    collected[#collected + 1] = writes
    for channel, value in pairs(found) do
      seeds[channel] = value
      remaining[channel] = nil
      left = left - 1
    end
    cursor = rec[1]
  end
  if left == 0 then
    cursor = ''
  end
  local reply = {cursor, used, ancestors}
  for i = first + 1, first + #names do
    local channel = args[i]
    local item = {seeds[channel] or ''}
    for a = #collected, 1, -1 do
      for _, write in ipairs(collected[a]) do
        if write[1] == channel then
          item[#item + 1] = write[2]
        end
      end
    end
    reply[#reply + 1] = item
  end
  return reply
end

-- The library's whole surface. Names carry the contract version; see the header.
redis.register_function{function_name = 'pyhistory_checkpoint_v5_put', callback = put}
redis.register_function{
  function_name = 'pyhistory_checkpoint_v5_put_writes', callback = put_writes}
-- get writes only a TTL: allow-oom lets a graph resume while the server is out of memory.
redis.register_function{
  function_name = 'pyhistory_checkpoint_v5_get', callback = get, flags = {'allow-oom'}}
redis.register_function{
  function_name = 'pyhistory_checkpoint_v5_get_ro', callback = get_ro, flags = {'no-writes'}}
redis.register_function{
  function_name = 'pyhistory_checkpoint_v5_list', callback = list, flags = {'no-writes'}}
redis.register_function{function_name = 'pyhistory_checkpoint_v5_prune', callback = prune}
redis.register_function{function_name = 'pyhistory_checkpoint_v5_copy', callback = copy}
redis.register_function{
  function_name = 'pyhistory_checkpoint_v5_export', callback = export, flags = {'no-writes'}}
redis.register_function{function_name = 'pyhistory_checkpoint_v5_import', callback = import}
redis.register_function{
  function_name = 'pyhistory_checkpoint_v5_delta', callback = delta, flags = {'no-writes'}}
redis.register_function{function_name = 'pyhistory_checkpoint_v5_claim', callback = claim}
redis.register_function{function_name = 'pyhistory_checkpoint_v5_retain', callback = retain}
redis.register_function{function_name = 'pyhistory_checkpoint_v5_trim', callback = retention}
redis.register_function{
  function_name = 'pyhistory_checkpoint_v5_delete_run', callback = delete_run}
