-- clubio.dr, site files and running the steps: dr-site.lua files found on CLUBIO_DR_PATH edit the
-- steps (dr.edit), and run_steps runs them as job steps (journal, timings, --from, --dry-run).
-- A part of clubio.dr: require("clubio.dr") calls this file's function with its table.
return function(M)
  local log, clubio = require "log", require "clubio"
  local getenv = require("clubio.dr_util").getenv

  -- ---- site files --------------------------------------------------------------------------

  -- A folder? (io.open succeeds on a folder on Linux; reading it fails with EISDIR, 21.)
  local function is_dir(path)
    local f = io.open(path, "r")
    if not f then return false end
    local _, _, code = f:read(1)
    f:close()
    return code == 21
  end

  function M.index(steps, name)
    for i, s in ipairs(steps) do if s.name == name then return i end end
    return nil
  end

  local function need(steps, name)
    local i = M.index(steps, name)
    if not i then
      clubio.fail{message = "no failover step named '" .. tostring(name) .. "'", class = "config", code = "config.dr_site",
                  hint = "the steps are: " .. table.concat((function() local t = {} for _, s in ipairs(steps) do t[#t + 1] = s.name end return t end)(), ", ")}
    end
    return i
  end

  -- Helpers handed to site files as their second argument.
  M.edit = {
    index = M.index,
    get = function(steps, name) return steps[need(steps, name)] end,
    remove = function(steps, name) return table.remove(steps, need(steps, name)) end,
    replace = function(steps, name, step) steps[need(steps, name)] = step; return steps end,
    insert_after = function(steps, name, step) table.insert(steps, need(steps, name) + 1, step); return steps end,
    insert_before = function(steps, name, step) table.insert(steps, need(steps, name), step); return steps end,
    move_after = function(steps, name, after)
      local s = table.remove(steps, need(steps, name))
      table.insert(steps, need(steps, after) + 1, s)
      return steps
    end,
    order = function(steps, names)
      local out = {}
      for _, n in ipairs(names) do out[#out + 1] = steps[need(steps, n)] end
      return out
    end,
  }

  local function check_steps(steps, where)
    if type(steps) ~= "table" then
      clubio.fail{message = where .. " did not return the steps (a table)", class = "config", code = "config.dr_site"}
    end
    local seen = {}
    for i, s in ipairs(steps) do
      if type(s) ~= "table" or type(s.name) ~= "string" or type(s.run) ~= "function" then
        clubio.fail{message = string.format("%s: step %d is not {name = \"...\", run = function(ctx) ... end}", where, i),
                    class = "config", code = "config.dr_site"}
      end
      if seen[s.name] then
        clubio.fail{message = where .. ": two steps named " .. s.name, class = "config", code = "config.dr_site"}
      end
      seen[s.name] = true
    end
    return steps
  end

  -- Applies the site files found through CLUBIO_DR_PATH (a colon-separated list of files, or of
  -- folders holding dr-site.lua). A site file returns either function(steps, edit, dr) -> steps
  -- (it may also edit `steps` in place and return nothing), or a table:
  --   {steps = {...}}                          the whole list, replacing the provided one
  --   {replace = {["name"] = step}, remove = {"name"}, order = {"name", ...},
  --    before = {["name"] = {step, ...}}, after = {["name"] = {step, ...}}}
  function M.load_site(steps, path, site_name)
    path = path or getenv("CLUBIO_DR_PATH")
    site_name = site_name or "dr-site.lua"
    if not path then return steps, {} end
    local used = {}
    for entry in path:gmatch("[^:]+") do
      local file = entry
      if is_dir(entry) then
        -- a folder of the path (it may hold only jobs.conf, or nothing yet): its site file or nothing
        file = entry .. "/" .. site_name
        local f = io.open(file, "r")
        if not f then
          log.debug("CLUBIO_DR_PATH folder has no " .. site_name, {entry = entry})
          goto continue
        end
        f:close()
      elseif site_name ~= "dr-site.lua" then
        -- a file on the path is a failover site file; other step lists are only found in folders
        goto continue
      else
        local f = io.open(entry, "r")
        if not f then
          log.debug("CLUBIO_DR_PATH entry does not exist", {entry = entry})
          goto continue
        end
        f:close()
      end
      local chunk, err = loadfile(file)
      if not chunk then
        clubio.fail{message = "cannot load the DR site file " .. file .. ": " .. tostring(err), class = "config",
                    code = "config.dr_site"}
      end
      do
        local ok, site = pcall(chunk)
        if not ok then
          clubio.fail{message = "the DR site file " .. file .. " failed: " .. tostring(site), class = "config", code = "config.dr_site"}
        end
        if type(site) == "function" then
          local ok2, r = pcall(site, steps, M.edit, M)
          if not ok2 then
            if clubio.is_error(r) then error(r, 0) end
            clubio.fail{message = "the DR site file " .. file .. " failed: " .. tostring(r), class = "config", code = "config.dr_site"}
          end
          steps = r or steps
        elseif type(site) == "table" then
          if site.steps then steps = site.steps end
          for name, s in pairs(site.replace or {}) do M.edit.replace(steps, name, s) end
          for _, name in ipairs(site.remove or {}) do M.edit.remove(steps, name) end
          for name, list in pairs(site.before or {}) do
            for _, s in ipairs(list) do M.edit.insert_before(steps, name, s) end
          end
          for name, list in pairs(site.after or {}) do
            for i = #list, 1, -1 do M.edit.insert_after(steps, name, list[i]) end
          end
          if site.order then steps = M.edit.order(steps, site.order) end
        else
          clubio.fail{message = "the DR site file " .. file .. " must return a function or a table", class = "config",
                      code = "config.dr_site"}
        end
        check_steps(steps, file)
        used[#used + 1] = file
      end
      ::continue::
    end
    return steps, used
  end

  -- ---- running the failover ----------------------------------------------------------------

  -- Runs the steps as steps of job J (journal with timings). opts.from: start at that step (the
  -- earlier ones are journaled as skipped). A failing step stops the run: the error says which
  -- step, what completed, and what to do next.
  --
  -- Under --dry-run the steps' read-only checks (their `dry`) all run and every problem is
  -- collected: a dry run of a failover that would fail says why and exits non-zero.
  -- ctx.rehearsal (dr-test on copies): only steps marked `rehearse = true` run; the others (e.g.
  -- Route53, or a site's step that acts on production) are journaled as skipped.
  -- opts.what names the procedure in errors ("failover", "failback").
  function M.run_steps(J, ctx, steps, opts)
    opts = opts or {}
    local what = opts.what or "failover"
    local start = 1
    if opts.from then start = need(steps, opts.from) end
    ctx.completed = {}
    local problems = {}
    for i, s in ipairs(steps) do
      if i < start then
        J:record({step = s.name, status = "skipped", reason = "--from " .. opts.from})
      elseif ctx.rehearsal and not s.rehearse then
        log.info("rehearsal: skipping " .. s.name .. " (it acts on production; a step runs in a rehearsal when marked rehearse = true)")
        J:record({step = s.name, status = "skipped", reason = "rehearsal"})
      else
        local plan = s.plan
        if type(plan) == "function" then plan = plan(ctx) end
        local ok, res = pcall(J.step, J, s.name, {plan = plan, hint = s.hint, dry = s.dry and function() return s.dry(ctx) end},
                              function() return s.run(ctx) end)
        if not ok and J.dry_run then
          local msg = clubio.is_error(res) and res.message or tostring(res)
          log.error(string.format("the %s would fail at step %d/%d '%s': %s", what, i, #steps, s.name, msg))
          problems[#problems + 1] = {step = s.name, index = i, error = res, message = msg}
          ok, res = true, nil
        end
        if not ok then
          local e = res
          local msg = clubio.is_error(e) and e.message or tostring(e)
          -- the error's own hint (the cause), then the step's (what to do about the failover)
          local hint = (clubio.is_error(e) and e.hint) or ""
          if s.hint and s.hint ~= hint then hint = hint ~= "" and (hint .. "; " .. s.hint) or s.hint end
          local nextstep = steps[i + 1] and steps[i + 1].name
          clubio.fail{message = string.format("%s stopped at step %d/%d '%s': %s", what, i, #steps, s.name, msg),
                      code = "dr.step_failed", class = clubio.is_error(e) and e.class or "failure",
                      hint = string.format("%s%sdone so far: %s.%s", hint, hint ~= "" and "; " or "",
                                           #ctx.completed > 0 and table.concat(ctx.completed, ", ") or "nothing",
                                           hint:find("--from", 1, true) and "" or
                                           string.format(" After fixing it, re-run with --from %s%s", s.name,
                                             nextstep and (" (or --from " .. nextstep .. " if you did it by hand)") or ""))}
        end
        ctx.results[s.name] = res
        ctx.completed[#ctx.completed + 1] = s.name
        if opts.after_step then opts.after_step(ctx, s.name, res) end
      end
    end
    if #problems > 0 then
      local p = problems[1]
      local e = p.error
      clubio.fail{message = string.format("dry run: the %s would fail at step %d/%d '%s': %s%s", what, p.index, #steps, p.step,
                                          p.message, #problems > 1 and string.format(" (and %d more problems, logged above)", #problems - 1) or ""),
                  code = "dr.dry_run_failed", class = clubio.is_error(e) and e.class ~= "usage" and e.class or "failure",
                  hint = (clubio.is_error(e) and e.hint) or steps[p.index].hint or "fix it before failing over"}
    end
    return ctx.results
  end
end
