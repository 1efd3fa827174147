-- proc.lock: a kernel lock (flock) held by an open descriptor. One holder at a time; a child
-- given the lock (proc.run{lock = l}) holds it for as long as it lives, even once we let go,
-- and no other child gets the descriptor; a wait for it ends on --timeout (exit 124).
package.path = arg[0]:match("(.*/)") .. "?.lua;" .. package.path
local T = require "testing"
local proc, time = require "proc", require "time"
local BIN = os.getenv("CLUBIO_DR_BIN")

local D = T.tmpdir()
local P = D .. "/job.lock"

T.case("one holder at a time; released by :release(), by <close>, and when the holder exits", function()
  local a = assert(proc.lock(P))
  local b, why = proc.lock(P)
  T.eq(b, nil)
  T.eq(why, "held")
  -- another process sees it held, and takes it once we let go
  local r = proc.run{argv = {BIN, "-e", "print(select(2, require('proc').lock('" .. P .. "')))"}}
  T.eq(r.stdout, "held\n", r.stderr)
  a:release()
  do
    local c <close> = assert(proc.lock(P))
    T.eq(tostring(c), "lock (held)")
  end
  local d = assert(proc.lock(P), "free after the <close> block")
  d:release()
  T.eq(tostring(d), "lock (released)")
  -- a process that exits without releasing: the kernel lets go
  r = proc.run{argv = {BIN, "-e", "assert(require('proc').lock('" .. P .. "')); os.exit(0)"}}
  T.eq(r.status, 0, r.stderr)
  local e = assert(proc.lock(P), "free after its holder exited")
  e:release()
end)

T.case("a child given the lock holds it after we let go; other children never get it", function()
  local l = assert(proc.lock(P))
  -- the child leaves a grandchild behind that waits for a file: the lock lives with it
  local r = proc.run{argv = {"sh", "-c", '(while [ ! -e "$1" ]; do sleep 0.05; done) >/dev/null 2>&1 & echo $!', "sh", D .. "/go"},
                     lock = l}
  T.eq(r.status, 0, r.stderr)
  -- a child not given the lock has no descriptor of it
  local fds = proc.run{argv = {"sh", "-c", "ls -l /proc/$$/fd"}}.stdout
  T.no_match(fds, "job%.lock", "not inherited by other children")
  l:release()
  T.eq(proc.lock(P), nil, "still held by the grandchild")
  local f = assert(io.open(D .. "/go", "w"))
  f:close()
  local got
  for _ = 1, 1200 do -- a hang guard, not a timing assertion
    got = proc.lock(P)
    if got then break end
    time.sleep(0.05)
  end
  T.ok(got, "free once the grandchild has exited")
  got:release()
end)

T.case("waiting for a held lock: wait = seconds, and --timeout ends the wait (exit 124)", function()
  local l = assert(proc.lock(P))
  local r = proc.run{argv = {BIN, "-e", "print(select(2, require('proc').lock('" .. P .. "', {wait = 0.2})))"}}
  T.eq(r.stdout, "held\n", r.stderr)
  r = proc.run{argv = {BIN, "--timeout", "1", "-e", "require('proc').lock('" .. P .. "', {wait = 600}); print('got it')"}}
  T.eq(r.status, 124, r.stdout .. r.stderr)
  T.no_match(r.stdout, "got it")
  l:release()
  -- bad arguments are usage errors
  local err = T.raises(proc.lock, P, {wiat = 1})
  T.match(tostring(err), "unknown option 'wiat'")
  err = T.raises(proc.run, {argv = {"true"}, lock = "x"})
  T.match(tostring(err), "lock must be a held lock")
  err = T.raises(proc.lock, D .. "/no/such/folder/x.lock")
  T.match(tostring(err), "cannot open the lock file")
end)

proc.run{argv = {"rm", "-rf", D}}
return T.finish()
