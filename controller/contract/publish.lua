-- Publish (or restore) the route of a Running sandbox; controller only.
--
--   EVAL publish.lua 3 lss:sb:<id> lss:pool:<pool>:ready lss:events
--        <id> <owner> <runner> <token> <expires_ms> <runtime> <pool> <now_ms>
--        <announce>
--
-- KEYS[2] is "" for a sandbox without a pool.  owner is what the
-- controller's record says ("" for an unclaimed warm sandbox).
-- Returns 1 when published, 0 when the route already carries another
-- owner (claimed since the record was read: the caller records the claim
-- and must not hand the sandbox out again).
-- An unclaimed warm sandbox is (re)appended to its pool's ready list;
-- LREM first, so republishing never lists an id twice.
local route, ready, events = KEYS[1], KEYS[2], KEYS[3]
local id, owner = ARGV[1], ARGV[2]
local cur = redis.call('HGET', route, 'owner')
if cur and cur ~= '' and cur ~= owner then
    return 0
end
redis.call('HSET', route, 'owner', owner, 'runner', ARGV[3],
           'token', ARGV[4], 'expires', ARGV[5], 'runtime', ARGV[6],
           'pool', ARGV[7], 'phase', 'Running')
if ready ~= '' then
    redis.call('LREM', ready, 0, id)
    if owner == '' then
        redis.call('RPUSH', ready, id)
    end
end
if ARGV[9] == '1' then
    local f = {'type', 'ready', 'id', id}
    if ARGV[7] ~= '' then
        table.insert(f, 'pool')
        table.insert(f, ARGV[7])
    end
    table.insert(f, 'at')
    table.insert(f, ARGV[8])
    redis.call('XADD', events, 'MAXLEN', '~', 100000, '*', unpack(f))
end
return 1
