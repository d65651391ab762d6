-- The baselines' state_post.lua (../shared/baselines/wrk, path in BASELINES_WRK) at a fixed
-- offered rate: RATE requests per second in all over THREADS wrk threads (default 2).
-- wrk calls delay() before each request; every call takes the next slot of its thread's
-- schedule (one every THREADS/RATE seconds), so the connections of a thread share one
-- schedule and the total is RATE while they keep up. Latency is timed from the send, as
-- wrk does (no correction for coordinated omission); a thread more than a second behind
-- its schedule starts again from now (no catch-up burst): the req/s printed is what was served.
dofile((os.getenv("BASELINES_WRK") or ".") .. "/state_post.lua")

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } paced_timespec;
  int clock_gettime(int clk_id, paced_timespec *tp);
]]
local ts = ffi.new("paced_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local interval = 1000 * tonumber(os.getenv("THREADS") or "2") / tonumber(os.getenv("RATE") or "100")
local next_at

function delay()
  local now = now_ms()
  if next_at == nil or next_at < now - 1000 then
    next_at = now
  end
  next_at = next_at + interval
  return math.max(0, next_at - interval - now)
end
