-- Claim one ready warm sandbox of a pool, atomically (the gateway's fast
-- path).  Loaded by the gateway and by the controller's tests from this
-- one file; see docs/architecture.md, "The Redis contract".
--
--   EVAL claim.lua 2 lss:pool:<pool>:ready lss:events <owner> <expires_ms>
--        <now_ms>
--
-- Returns the claimed sandbox id, or nil when the pool has none ready.
-- The route key lss:sb:<id> is derived here from the popped id, so this
-- script needs a single Redis instance (not Redis Cluster).
--
-- An id whose route is gone or already has an owner is dropped, never
-- handed out: a warm sandbox is bound to one owner, once.
local owner = ARGV[1]
local expires = ARGV[2]
local now = ARGV[3]
if owner == nil or owner == '' then
    return redis.error_reply('claim: empty owner')
end
if not tonumber(expires) or not tonumber(now) then
    return redis.error_reply('claim: expires and now must be numbers')
end
local pool = string.match(KEYS[1], '^lss:pool:(.+):ready$')
if pool == nil then
    return redis.error_reply('claim: KEYS[1] is not lss:pool:<pool>:ready')
end
-- bounded: at most the list's length at entry
local n = redis.call('LLEN', KEYS[1])
for _ = 1, n do
    local id = redis.call('LPOP', KEYS[1])
    if not id then
        return nil
    end
    local route = 'lss:sb:' .. id
    local cur = redis.call('HGET', route, 'owner')
    if cur == '' then
        redis.call('HSET', route, 'owner', owner, 'expires', expires,
                   'phase', 'Running')
        redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100000, '*',
                   'type', 'claimed', 'id', id, 'pool', pool,
                   'owner', owner, 'at', now)
        return id
    end
end
return nil
