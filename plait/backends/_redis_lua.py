"""The Lua of the Redis backend: one operation per atomic protocol call, as one function
library (``LIBRARY``, Redis 7: loaded once, called with FCALL) or as scripts (``SCRIPTS``,
EVALSHA). Both are built from the same helpers and bodies.

Every operation gets the key prefix as ``ARGV[1]``, the wake-up message to publish as ``ARGV[2]``
(empty: publish nothing), the kinds of queue summary wanted back and their time as ``ARGV[3]``
and ``ARGV[4]``, then its own arguments (``A[1]``...). The scripts only store, move and index
strings the Python side encoded (events, records, scores) and check uniqueness (keys, hook
tokens, run ids) and fencing tokens: no business rule lives here. Times and step leases travel as
strings (``repr(float)``, ``str(int)``), never as Lua numbers: Redis formats a Lua number
argument with 14 significant digits, and a Lua number is a double.

Key layout under the prefix ``p`` (see docs/backends/redis.md):

* ``p meta`` hash: ``magic`` = plait, ``version``.
* ``p n`` / ``p iid`` / ``p sl``: counters for enqueue order, inbox entry ids, step leases.
* ``p run:<id>`` hash: the record (``w s c k pr ps pc qu res err ca ct br``; ``x`` = closed),
  ``o`` creation order, ``f`` fencing token, ``q``/``qr`` the queued workflow task's member and
  ready time, ``lx`` the lease expiry while a workflow lease is held, ``cid`` the id of the last
  commit applied (so a commit re-sent after a lost reply is recognised), ``ec`` the request id
  of the eager start that created it (likewise).
* ``p hist:<id>`` list of event JSON; ``p inbox:<id>`` list of ``"<entry id> <event JSON>"``.
* ``p runs`` zset (all runs), ``p st:<status>``, ``p bywf:<workflow>``, ``p kids:<parent>``:
  run ids scored by creation order, for ``list_runs``.
* ``p keys`` hash key -> run id (open runs only); ``p hooks`` hash token -> ``"<seq>|<run>"``
  (open hooks only) and ``p rh:<run>`` set of that run's tokens.
* ``p wfq`` zset of ready workflow tasks (score ready time; member ``"<order>|<run>"``, the
  zero-padded order breaking ties); ``p wflease`` the leased ones, scored by lease expiry.
* ``p step:<run>:<seq>`` hash (``d`` = JSON [name, args], ``a`` attempt, ``r`` ready time,
  ``l`` lease, ``m`` member, ``x`` lease expiry); ``p rs:<run>`` set of the run's step seqs;
  ``p stepq`` / ``p steplease`` zsets as for workflow tasks (member ``"<order>|<seq>|<run>"``).
* ``p timers`` zset (score fire time, member ``"<order>|<seq>|<run>"``) and ``p rt:<run>`` hash
  seq -> member.
* ``p req:<uuid>``: the remembered answer of a non-idempotent call, so a retry after a lost
  reply does not apply it twice.

An expired lease stays in the lease zset until a claim (or ``state``) moves it back into the
ready zset with its original ready time and order: expiry only makes the task claimable again,
exactly as in the memory backend, and the old holder may still renew or finish while nobody
else has claimed it.
"""

from __future__ import annotations

import hashlib

__all__ = ["SCRIPTS", "PRELUDE", "HELPERS", "LIBRARY", "LIBRARY_NAME", "FUNCTIONS"]

# How a script (EVALSHA) starts: the call's arguments as the helpers see them.
_SCRIPT_HEAD = r"""
local P = ARGV[1]
local WAKE = ARGV[2]
local A = {}
for i = 5, #ARGV do A[#A + 1] = ARGV[i] end
"""

# The helpers every operation shares. ``EMPTY`` is never written to: in the function library
# it lives as long as the library.
HELPERS = r"""
local EMPTY = {}

local function pad(n) return string.format('%016d', n) end
local function nxt() return redis.call('INCR', P .. 'n') end
local function runkey(rid) return P .. 'run:' .. rid end
local function stepkey(rid, seq) return P .. 'step:' .. rid .. ':' .. seq end

-- WAKE is "<n> <message>": publish the message unless the channel's only subscribers are the
-- caller's own n (its process learns of its own changes locally).
local function wake()
  if WAKE == '' then return end
  local ours, msg = string.match(WAKE, '^(%d+) (.*)$')
  if redis.call('PUBSUB', 'NUMSUB', P .. 'wake')[2] > tonumber(ours) then
    redis.call('PUBLISH', P .. 'wake', msg)
  end
end

local function is_open(rk)
  local v = redis.call('HMGET', rk, 's', 'x')
  return v[1] and not v[2]
end

-- Queue the run's workflow task unless one is queued or leased already.
local function wf_queue(rid, rk, ready)
  if redis.call('HEXISTS', rk, 'q') == 1 then return end
  local m = pad(nxt()) .. '|' .. rid
  redis.call('HSET', rk, 'q', m, 'qr', ready)
  redis.call('ZADD', P .. 'wfq', ready, m)
end

-- Append one event to an open run's inbox and queue its workflow task.
local function deliver(rid, ev, now)
  local rk = runkey(rid)
  if not is_open(rk) then return false end
  local id = redis.call('INCR', P .. 'iid')
  redis.call('RPUSH', P .. 'inbox:' .. rid, id .. ' ' .. ev)
  wf_queue(rid, rk, now)
  return true
end

local function deliver_d(d, now)
  if d then deliver(d[1], d[2], now) end
end

local function push_all(key, items, first)
  local n = #items
  local i = first or 1
  while i <= n do
    local j = math.min(i + 999, n)
    redis.call('RPUSH', key, unpack(items, i, j))
    i = j + 1
  end
end

-- Create a run: { id, fields (flat), key, status, workflow, parent, inbox events }.
local function insert_run(nr, now)
  local rid = nr[1]
  local rk = runkey(rid)
  local o = nxt()
  redis.call('HSET', rk, 'o', o, 'f', 0, unpack(nr[2]))
  redis.call('ZADD', P .. 'runs', o, rid)
  redis.call('ZADD', P .. 'st:' .. nr[4], o, rid)
  redis.call('ZADD', P .. 'bywf:' .. nr[5], o, rid)
  if nr[6] then redis.call('ZADD', P .. 'kids:' .. nr[6], o, rid) end
  if nr[3] then redis.call('HSET', P .. 'keys', nr[3], rid) end
  for _, ev in ipairs(nr[7]) do deliver(rid, ev, now) end
end

-- Move expired leases (score <= now) back to the ready zset with their original score.
local function unlease_wf(now)
  local gone = redis.call('ZRANGEBYSCORE', P .. 'wflease', '-inf', now)
  for _, m in ipairs(gone) do
    local rid = string.sub(m, 18)
    redis.call('ZREM', P .. 'wflease', m)
    local qr = redis.call('HGET', runkey(rid), 'qr')
    if qr then redis.call('ZADD', P .. 'wfq', qr, m) end
  end
end

local function unlease_steps(now)
  local gone = redis.call('ZRANGEBYSCORE', P .. 'steplease', '-inf', now)
  for _, m in ipairs(gone) do
    local seq, rid = string.match(m, '^%d+|(%-?%d+)|(.*)$')
    redis.call('ZREM', P .. 'steplease', m)
    local r = redis.call('HGET', stepkey(rid, seq), 'r')
    if r then redis.call('ZADD', P .. 'stepq', r, m) end
  end
end

local function remove_step(rid, seq)
  local sk = stepkey(rid, seq)
  local m = redis.call('HGET', sk, 'm')
  if m then
    redis.call('ZREM', P .. 'stepq', m)
    redis.call('ZREM', P .. 'steplease', m)
  end
  redis.call('DEL', sk)
  redis.call('SREM', P .. 'rs:' .. rid, seq)
end

-- A step task; with a lease and its expiry (eager dispatch) it is stored already leased.
local function add_step(rid, seq, d, attempt, ready, lease, expires)
  local sk = stepkey(rid, seq)
  -- A run's step seqs (rs) and step hashes come and go together: a seq already in the set is a
  -- step being replaced.
  if redis.call('SADD', P .. 'rs:' .. rid, seq) == 0 then
    local old = redis.call('HGET', sk, 'm')
    if old then
      redis.call('ZREM', P .. 'stepq', old)
      redis.call('ZREM', P .. 'steplease', old)
    end
    redis.call('DEL', sk)
  end
  local m = pad(nxt()) .. '|' .. seq .. '|' .. rid
  if lease ~= '0' and expires then
    redis.call('HSET', sk, 'd', d, 'a', attempt, 'r', ready, 'l', lease, 'm', m, 'x', expires)
    redis.call('ZADD', P .. 'steplease', expires, m)
  else
    redis.call('HSET', sk, 'd', d, 'a', attempt, 'r', ready, 'l', 0, 'm', m)
    redis.call('ZADD', P .. 'stepq', ready, m)
  end
end

-- Lease the queued workflow task ``m`` (member of wfq) until ``expires``.
local function claim_task(m, expires)
  local rid = string.sub(m, 18)
  local rk = runkey(rid)
  local fence = redis.call('HINCRBY', rk, 'f', 1)
  redis.call('HSET', rk, 'lx', expires)
  redis.call('ZREM', P .. 'wfq', m)
  redis.call('ZADD', P .. 'wflease', expires, m)
  return {rid, fence, redis.call('HGETALL', rk),
    redis.call('LRANGE', P .. 'inbox:' .. rid, 0, -1), redis.call('LLEN', P .. 'hist:' .. rid)}
end

local function cancel_timer(rid, seq)
  local rt = P .. 'rt:' .. rid
  local m = redis.call('HGET', rt, seq)
  if m then
    redis.call('ZREM', P .. 'timers', m)
    redis.call('HDEL', rt, seq)
  end
end

-- Deliver HookReceived for an open hook: returns its run id, or false.
local function resume(token, pre, post, now)
  local owner = redis.call('HGET', P .. 'hooks', token)
  if not owner then return false end
  local seq, rid = string.match(owner, '^(%-?%d+)|(.*)$')
  deliver(rid, pre .. seq .. post, now)
  return rid
end

-- A workflow task stops being queued or leased.
local function wf_unqueue(rk)
  local m = redis.call('HGET', rk, 'q')
  if m then
    redis.call('ZREM', P .. 'wfq', m)
    redis.call('ZREM', P .. 'wflease', m)
  end
  redis.call('HDEL', rk, 'q', 'qr', 'lx')
end

-- A closing run releases its key and hooks, drops its steps, timers, task and inbox.
local function drop_pending(rid, rk)
  local key = redis.call('HGET', rk, 'k')
  if key and redis.call('HGET', P .. 'keys', key) == rid then
    redis.call('HDEL', P .. 'keys', key)
  end
  local rh = P .. 'rh:' .. rid
  for _, token in ipairs(redis.call('SMEMBERS', rh)) do
    local owner = redis.call('HGET', P .. 'hooks', token)
    if owner and string.match(owner, '^%-?%d+|(.*)$') == rid then
      redis.call('HDEL', P .. 'hooks', token)
    end
  end
  redis.call('DEL', rh)
  for _, seq in ipairs(redis.call('SMEMBERS', P .. 'rs:' .. rid)) do remove_step(rid, seq) end
  local rt = P .. 'rt:' .. rid
  local tm = redis.call('HGETALL', rt)
  for i = 2, #tm, 2 do redis.call('ZREM', P .. 'timers', tm[i]) end
  redis.call('DEL', rt)
  local m = redis.call('HGET', rk, 'q')
  if m then
    redis.call('ZREM', P .. 'wfq', m)
    redis.call('ZREM', P .. 'wflease', m)
  end
  redis.call('HDEL', rk, 'q', 'qr')
  redis.call('DEL', P .. 'inbox:' .. rid)
end

-- Apply a commit: ``c`` its decoded head (``_redis_codec.commit_args``; empty parts are left
-- out), its events A[first], A[first + 1]... Returns 1 (the run's record if the commit closes
-- it), or 0 with nothing changed; then the kinds of queue it left as they were (for ``reply``).
-- With ``spec`` ({step seq, step lease, history length}) it is speculative: it applies only if
-- that step is held with that lease and the run is quiet (no live workflow lease, an empty
-- inbox, a history of that length), and it deletes the step first.
local function apply(c, first, spec)
  local rid = c.r
  local rk = runkey(rid)
  local now = c.now
  local cur = redis.call('HMGET', rk, 's', 'x', 'f', 'lx', 'o', 'cid', 'q', 'br')
  -- The same commit sent again after its reply was lost: it is in already.
  if cur[6] and cur[6] == c.id then return 1, 'wst' end
  if not cur[1] or cur[2] then return 0, 'wst' end
  local ib = P .. 'inbox:' .. rid
  local hist = P .. 'hist:' .. rid
  if spec then
    local sk = stepkey(rid, spec[1])
    local held = redis.call('HMGET', sk, 'l', 'm')
    if held[1] ~= spec[2]
      or (cur[4] and tonumber(cur[4]) > tonumber(now))
      or redis.call('LLEN', ib) > 0
      or redis.call('LLEN', hist) ~= tonumber(spec[3]) then
      return 0, 'wst'
    end
    -- Held, so leased: in the ready set only if its lease expired and a claim moved it back.
    if redis.call('ZREM', P .. 'steplease', held[2]) == 0 then
      redis.call('ZREM', P .. 'stepq', held[2])
    end
    redis.call('DEL', sk)
    redis.call('SREM', P .. 'rs:' .. rid, spec[1])
  end
  -- One HSET for the record: its changed fields, the commit id, a forced commit's new token.
  local set = c.set or {}
  set[#set + 1] = 'cid'
  set[#set + 1] = c.id
  if c.l < 0 then
    set[#set + 1] = 'f'
    set[#set + 1] = string.format('%d', tonumber(cur[3]) + 1)
  elseif tonumber(cur[3]) ~= c.l or not cur[4] then
    return 0, 'wst'
  end
  if #A >= first then push_all(hist, A, first) end
  local up = c.up or 0
  if up > 0 then
    local entries = redis.call('LRANGE', ib, 0, -1)
    local k = 0
    for _, e in ipairs(entries) do
      if tonumber(string.sub(e, 1, string.find(e, ' ', 1, true) - 1)) <= up then
        k = k + 1
      else
        break
      end
    end
    if k > 0 then redis.call('LTRIM', ib, k, -1) end
  end
  if c.br then
    set[#set + 1] = 'br'
    set[#set + 1] = c.br
  elseif cur[8] then
    redis.call('HDEL', rk, 'br')
  end
  if c.cl then
    set[#set + 1] = 'x'
    set[#set + 1] = 1
    set[#set + 1] = 'ca'
    set[#set + 1] = now
  end
  redis.call('HSET', rk, unpack(set))
  if c.s and c.s ~= cur[1] then
    redis.call('ZREM', P .. 'st:' .. cur[1], rid)
    redis.call('ZADD', P .. 'st:' .. c.s, cur[5], rid)
  end
  for _, s in ipairs(c.st or EMPTY) do add_step(s[1], s[2], s[3], s[4], s[5], s[6], s[7]) end
  for _, t in ipairs(c.tm or EMPTY) do
    local trt = P .. 'rt:' .. t[1]
    local old = redis.call('HGET', trt, t[2])
    if old then redis.call('ZREM', P .. 'timers', old) end
    local m = pad(nxt()) .. '|' .. t[2] .. '|' .. t[1]
    redis.call('ZADD', P .. 'timers', t[3], m)
    redis.call('HSET', trt, t[2], m)
  end
  for _, seq in ipairs(c.ct or EMPTY) do cancel_timer(rid, seq) end
  -- Disposals first: a token closed and opened again in one activation moves to the new hook.
  for _, token in ipairs(c.dh or EMPTY) do
    local owner = redis.call('HGET', P .. 'hooks', token)
    if owner and string.match(owner, '^%-?%d+|(.*)$') == rid then
      redis.call('HDEL', P .. 'hooks', token)
      redis.call('SREM', P .. 'rh:' .. rid, token)
    end
  end
  for _, h in ipairs(c.hk or EMPTY) do
    if redis.call('HSETNX', P .. 'hooks', h[1], h[2] .. '|' .. rid) == 1 then
      redis.call('SADD', P .. 'rh:' .. rid, h[1])
    else
      deliver_d(h[3], now)
    end
  end
  if c.cl then drop_pending(rid, rk) end
  for _, nr in ipairs(c.nr or EMPTY) do
    if redis.call('EXISTS', runkey(nr[1])) == 0 then
      if nr[3] and redis.call('HEXISTS', P .. 'keys', nr[3]) == 1 then
        deliver_d(nr[9], now)
      else
        insert_run(nr, now)
        deliver_d(nr[8], now)
      end
    end
  end
  for _, hr in ipairs(c.hr or EMPTY) do
    if resume(hr[1], hr[2], hr[3], now) then deliver_d(hr[4], now) else deliver_d(hr[5], now) end
  end
  for _, d in ipairs(c.dl or EMPTY) do deliver(d[1], d[2], now) end
  -- Release the task. Only deliveries made by this commit can have queued it or filled the
  -- inbox of a speculative one (whose inbox was empty): without them, skip the look-ups.
  local delivered = c.hk or c.nr or c.hr or c.dl
  local moved = delivered or cur[4] or cur[7] or c.cl
  if moved then wf_unqueue(rk) end
  if c.rq and not c.cl and (delivered or not spec) and redis.call('LLEN', ib) > 0 then
    wf_queue(rid, rk, now)
    moved = true
  end
  wake()
  local same = (not moved) and 'w' or nil
  -- A closed record never changes again: the caller may keep it (``Shared.closed``).
  if c.cl then return redis.call('HGETALL', rk), same end
  return 1, same
end

local function min_above(key, now)
  local r = redis.call('ZRANGEBYSCORE', key, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  return r[2] or false
end

-- The lowest score in a sorted set, or false.
local function head(key)
  return redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2] or false
end

-- One queue at ``now``: {entries of ``ready`` due by now, entries of ``lease`` once ``unlease``
-- moved the expired ones back, the earliest ready time after now, the earliest lease expiry}.
-- The heads come first: usually nothing is due, and two or three calls answer.
local function summary(ready, lease, unlease, now)
  local t = tonumber(now)
  local first = head(lease)
  if first and tonumber(first) <= t then
    unlease(now)
    first = head(lease)
  end
  local n, later = 0, head(ready)
  if later and tonumber(later) <= t then
    n = redis.call('ZCOUNT', ready, '-inf', now)
    later = min_above(ready, now)
  end
  return {n, first and redis.call('ZCARD', lease) or 0, later, first}
end

-- What is queued, as of ARGV[4], for each kind in ARGV[3] ('w' workflow tasks, 's' steps,
-- 't' timers): the Python side caches these to answer claims and ``state`` without a trip.
-- The kinds in ``same`` this call did not change: false for them (what was known holds).
local function summaries(same)
  local now = ARGV[4]
  local out = {}
  for kind in string.gmatch(ARGV[3], '.') do
    if same and string.find(same, kind, 1, true) then
      out[#out + 1] = false
    elseif kind == 'w' then
      out[#out + 1] = summary(P .. 'wfq', P .. 'wflease', unlease_wf, now)
    elseif kind == 's' then
      out[#out + 1] = summary(P .. 'stepq', P .. 'steplease', unlease_steps, now)
    else
      local tm = P .. 'timers'
      local n, later = 0, head(tm)
      if later and tonumber(later) <= tonumber(now) then
        n = redis.call('ZCOUNT', tm, '-inf', now)
        later = min_above(tm, now)
      end
      out[#out + 1] = {n, (n > 0 or later) and redis.call('ZCARD', tm) or 0, later, false}
    end
  end
  return out
end

-- One JSON string: a single bulk reply is far cheaper for the client to parse than nested
-- arrays. Only strings, small integers and booleans go in (no float is re-encoded).
local function reply(result, same)
  return cjson.encode({result, summaries(same)})
end
"""

# Script arguments (after P, wake message, summary kinds, summary time) are A[1], A[2], ...
# Each script returns reply(result): the JSON of [result, summaries].

# A: run JSON [id, fields, key, status, workflow, parent, inbox], now
CREATE_RUN = r"""
local nr = cjson.decode(A[1])
if nr[3] then
  local holder = redis.call('HGET', P .. 'keys', nr[3])
  if holder then return reply({holder, 0}) end
end
if redis.call('EXISTS', runkey(nr[1])) == 1 then return reply({nr[1], 0}) end
insert_run(nr, A[2])
wake()
return reply({nr[1], 1})
"""

# A: run JSON (as for create_run), now, lease expiry, request id. ``create_run``, then the new
# run's workflow task claimed as ``claim_workflow`` would: {id, 1, claim} or {id, 0, false}.
# The request id stays in the run hash (``ec``): the same call sent again after its reply was
# lost answers the same claim while it still holds (the token is the first, never released),
# else {id, 0, false} as create_run's own resend does. It publishes nothing: the task is leased.
CREATE_RUN_AND_CLAIM = r"""
local nr = cjson.decode(A[1])
local rid = nr[1]
local rk = runkey(rid)
local mine = redis.call('HMGET', rk, 'ec', 'f', 'lx')
if mine[1] == A[4] then
  if mine[2] ~= '1' or not mine[3] then return reply({rid, 0, false}) end
  return reply({rid, 1, {rid, 1, redis.call('HGETALL', rk),
    redis.call('LRANGE', P .. 'inbox:' .. rid, 0, -1), redis.call('LLEN', P .. 'hist:' .. rid)}})
end
if nr[3] then
  local holder = redis.call('HGET', P .. 'keys', nr[3])
  if holder then return reply({holder, 0, false}) end
end
if redis.call('EXISTS', rk) == 1 then return reply({rid, 0, false}) end
local fields = nr[2]
fields[#fields + 1] = 'ec'
fields[#fields + 1] = A[4]
insert_run(nr, A[2])
wf_queue(rid, rk, A[2])
return reply({rid, 1, claim_task(redis.call('HGET', rk, 'q'), A[3])})
"""

# A: run JSON (as for create_run, no inbox), commit head JSON (lease -1), events...
# ``create_run``, then the commit applied to the new run as its first activation. The commit id
# stays in the run hash (``ec``): the same call sent again after its reply was lost answers
# {id, 1} again (or the record, if the commit closed the run) and applies nothing twice.
CREATE_RUN_AND_COMMIT = r"""
local nr = cjson.decode(A[1])
local c = cjson.decode(A[2])
local rid = nr[1]
local rk = runkey(rid)
if redis.call('HGET', rk, 'ec') == c.id then
  if redis.call('HEXISTS', rk, 'x') == 1 then return reply({rid, redis.call('HGETALL', rk)}) end
  return reply({rid, 1})
end
if nr[3] then
  local holder = redis.call('HGET', P .. 'keys', nr[3])
  if holder then return reply({holder, 0}) end
end
if redis.call('EXISTS', rk) == 1 then return reply({rid, 0}) end
local fields = nr[2]
fields[#fields + 1] = 'ec'
fields[#fields + 1] = c.id
insert_run(nr, c.now)
local got, same = apply(c, 3)
return reply({rid, got}, same)
"""

# A: run_id, request id, now, events...
APPEND_INBOX = r"""
local rid = A[1]
local req = P .. 'req:' .. A[2]
local prev = redis.call('GET', req)
if prev then return reply(tonumber(prev)) end
local ok = 0
if is_open(runkey(rid)) then
  for i = 4, #A do deliver(rid, A[i], A[3]) end
  ok = 1
  wake()
end
redis.call('SET', req, ok, 'EX', 86400)
return reply(ok)
"""

# A: run_id, events...
APPEND_HISTORY = r"""
if redis.call('EXISTS', runkey(A[1])) == 0 then return reply(0) end
local evs = {}
for i = 2, #A do evs[#evs + 1] = A[i] end
push_all(P .. 'hist:' .. A[1], evs)
return reply(1)
"""

# A: now, lease expiry
CLAIM_WORKFLOW = r"""
unlease_wf(A[1])
local first = redis.call('ZRANGEBYSCORE', P .. 'wfq', '-inf', A[1], 'LIMIT', 0, 1)
if not first[1] then return reply(false) end
return reply(claim_task(first[1], A[2]))
"""

# A: run_id, lease, expiry
RENEW_WORKFLOW = r"""
local rk = runkey(A[1])
local v = redis.call('HMGET', rk, 'f', 'lx', 'q')
if v[1] ~= A[2] or not v[2] then return reply(0) end
redis.call('HSET', rk, 'lx', A[3])
redis.call('ZREM', P .. 'wfq', v[3])
redis.call('ZADD', P .. 'wflease', A[3], v[3])
return reply(1)
"""

# A: run_id, now
REQUEUE_WORKFLOW = r"""
local rk = runkey(A[1])
if not is_open(rk) then return reply(0) end
wf_queue(A[1], rk, A[2])
wake()
return reply(1)
"""

# A: commit head JSON, events... (see _redis_codec.commit_args)
APPLY_COMMIT = r"""
return reply(apply(cjson.decode(A[1]), 2))
"""

# A: step seq, step lease, history length, commit head JSON (lease -1), events...
FINISH_STEP_AND_COMMIT = r"""
return reply(apply(cjson.decode(A[4]), 5, A))
"""

# A: now, limit, lease expiry
CLAIM_STEPS = r"""
local now = A[1]
unlease_steps(now)
local due = redis.call('ZRANGEBYSCORE', P .. 'stepq', '-inf', now, 'LIMIT', 0, tonumber(A[2]))
local out = {}
for _, m in ipairs(due) do
  local seq, rid = string.match(m, '^%d+|(%-?%d+)|(.*)$')
  local sk = stepkey(rid, seq)
  local lease = redis.call('INCR', P .. 'sl')
  redis.call('HSET', sk, 'l', lease, 'x', A[3])
  redis.call('ZREM', P .. 'stepq', m)
  redis.call('ZADD', P .. 'steplease', A[3], m)
  local v = redis.call('HMGET', sk, 'd', 'a', 'r')
  out[#out + 1] = {rid, seq, v[1], v[2], v[3], lease}
end
return reply(out)
"""

# A: run_id, seq, lease, expiry
HEARTBEAT_STEP = r"""
local sk = stepkey(A[1], A[2])
local v = redis.call('HMGET', sk, 'l', 'm')
if not v[1] or v[1] ~= A[3] then return reply(0) end
redis.call('HSET', sk, 'x', A[4])
redis.call('ZREM', P .. 'stepq', v[2])
redis.call('ZADD', P .. 'steplease', A[4], v[2])
return reply(1)
"""

# A: run_id, seq, lease, outcome event JSON, now
FINISH_STEP = r"""
if redis.call('HGET', stepkey(A[1], A[2]), 'l') ~= A[3] then return reply(0) end
remove_step(A[1], A[2])
deliver(A[1], A[4], A[5])
wake()
return reply(1)
"""

# A: run_id, seq, lease, outcome event JSON, now, workflow lease expiry
FINISH_STEP_AND_CLAIM = r"""
local rid, now = A[1], A[5]
if redis.call('HGET', stepkey(rid, A[2]), 'l') ~= A[3] then return reply({0, false}) end
remove_step(rid, A[2])
deliver(rid, A[4], now)
wake()
local v = redis.call('HMGET', runkey(rid), 'q', 'qr', 'lx')
if not v[1] or tonumber(v[2]) > tonumber(now) or (v[3] and tonumber(v[3]) > tonumber(now)) then
  return reply({1, false})
end
return reply({1, claim_task(v[1], A[6])})
"""

# A: run_id, seq, lease, attempt, ready_at
RETRY_STEP = r"""
local rid, seq = A[1], A[2]
local sk = stepkey(rid, seq)
local v = redis.call('HMGET', sk, 'l', 'm')
if not v[1] or v[1] ~= A[3] then return reply(0) end
redis.call('ZREM', P .. 'stepq', v[2])
redis.call('ZREM', P .. 'steplease', v[2])
local m = pad(nxt()) .. '|' .. seq .. '|' .. rid
redis.call('HSET', sk, 'a', A[4], 'r', A[5], 'l', 0, 'm', m)
redis.call('HDEL', sk, 'x')
redis.call('ZADD', P .. 'stepq', A[5], m)
wake()
return reply(1)
"""

# A: now, limit, TimerFired JSON before the seq, after the seq
FIRE_TIMERS = r"""
local now = A[1]
local due = redis.call('ZRANGEBYSCORE', P .. 'timers', '-inf', now, 'LIMIT', 0, tonumber(A[2]))
for _, m in ipairs(due) do
  local seq, rid = string.match(m, '^%d+|(%-?%d+)|(.*)$')
  redis.call('ZREM', P .. 'timers', m)
  redis.call('HDEL', P .. 'rt:' .. rid, seq)
  deliver(rid, A[3] .. seq .. A[4], now)
end
if #due > 0 then wake() end
return reply(#due)
"""

# A: token, request id, HookReceived JSON before the seq, after the seq, now
RESUME_HOOK = r"""
local req = P .. 'req:' .. A[2]
local prev = redis.call('GET', req)
if prev then return reply(prev) end
local rid = resume(A[1], A[3], A[4], A[5]) or ''
if rid ~= '' then wake() end
redis.call('SET', req, rid, 'EX', 86400)
return reply(rid)
"""

# A: run_id (one JSON reply is far cheaper for the client to parse than HGETALL's array)
GET_RUN = r"""
return reply(redis.call('HGETALL', runkey(A[1])))
"""

# (no arguments: the summaries are the answer)
STATE = r"""
return reply(0)
"""

# A: magic, version
SCHEMA = r"""
local meta = P .. 'meta'
local t = redis.call('TYPE', meta)['ok']
if t == 'none' then
  redis.call('HSET', meta, 'magic', A[1], 'version', A[2])
elseif t ~= 'hash' then
  return reply({'', t})
end
return reply(redis.call('HMGET', meta, 'magic', 'version'))
"""

_BODIES = {
    "create_run": CREATE_RUN,
    "create_run_and_claim": CREATE_RUN_AND_CLAIM,
    "create_run_and_commit": CREATE_RUN_AND_COMMIT,
    "append_inbox": APPEND_INBOX,
    "append_history": APPEND_HISTORY,
    "claim_workflow": CLAIM_WORKFLOW,
    "renew_workflow": RENEW_WORKFLOW,
    "requeue_workflow": REQUEUE_WORKFLOW,
    "apply_commit": APPLY_COMMIT,
    "finish_step_and_commit": FINISH_STEP_AND_COMMIT,
    "claim_steps": CLAIM_STEPS,
    "heartbeat_step": HEARTBEAT_STEP,
    "finish_step": FINISH_STEP,
    "finish_step_and_claim": FINISH_STEP_AND_CLAIM,
    "retry_step": RETRY_STEP,
    "fire_timers": FIRE_TIMERS,
    "resume_hook": RESUME_HOOK,
    "get_run": GET_RUN,
    "state": STATE,
    "schema": SCHEMA,
}

PRELUDE = _SCRIPT_HEAD + HELPERS
"""What every script (EVALSHA) runs before its operation."""

SCRIPTS: dict[str, str] = {name: PRELUDE + body for name, body in _BODIES.items()}
"""Script name -> full Lua source (the shared prelude followed by the operation)."""

# The same operations as one function library (Redis 7: FUNCTION LOAD, FCALL): the helpers are
# made once when the library loads instead of on every call, which was a quarter of a small
# script's time. Named after its own text, so plait versions sharing a Redis never collide.
_FUNCTIONS_TEXT = (
    "local ARGV, P, WAKE, A\n"
    + HELPERS
    + "".join(
        f"redis.register_function('__LIBRARY___{name}', function(_, argv)\n"
        "ARGV, P, WAKE, A = argv, argv[1], argv[2], {}\n"
        "for i = 5, #argv do A[#A + 1] = argv[i] end\n"
        f"{body}end)\n"
        for name, body in _BODIES.items()
    )
)
LIBRARY_NAME = "plait_" + hashlib.sha1(_FUNCTIONS_TEXT.encode()).hexdigest()[:16]
"""The library's name: ``plait_`` and a hash of its code."""

LIBRARY = f"#!lua name={LIBRARY_NAME}\n" + _FUNCTIONS_TEXT.replace("__LIBRARY__", LIBRARY_NAME)
"""The library's source, for ``FUNCTION LOAD``."""

FUNCTIONS: dict[str, str] = {name: f"{LIBRARY_NAME}_{name}" for name in _BODIES}
"""Operation name -> its function's name in the library."""
