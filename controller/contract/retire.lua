-- Take an unclaimed warm sandbox out of its pool (scale-down, pool
-- removed); controller only.
--
--   EVAL retire.lua 2 lss:sb:<id> lss:pool:<pool>:ready <id>
--
-- Returns 1 when the sandbox was still unclaimed: it is off the ready
-- list and its route is deleted, so no gateway can claim it any more.
-- Returns 0 when a gateway claimed it first (the claim script removes
-- the id from the list and sets the owner in one step): it is no longer
-- the pool's to retire.
local cur = redis.call('HGET', KEYS[1], 'owner')
if cur and cur ~= '' then
    return 0
end
redis.call('LREM', KEYS[2], 0, ARGV[1])
redis.call('DEL', KEYS[1])
return 1
