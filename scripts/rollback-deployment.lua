-- Roll the ECS service back to task definition clubio-api:VERSION; without VERSION list recent revisions
--
-- clubio-dr run rollback-deployment                   recent revisions and the deployed one
-- clubio-dr run rollback-deployment VERSION [--yes]   UpdateService to clubio-api:VERSION
--
-- The runbook's `aws ecs update-service --cluster clubio-production --service clubio-api
-- --task-definition clubio-api:$VERSION`, through the SigV4-signed ECS JSON API (the `aws`
-- module; the s3 module's credential chain). Before changing anything it checks that the
-- service exists and that the revision exists, and notes the revision running now (the way
-- back is printed). Destructive: asks for confirmation (or --yes; refused without --yes when
-- nobody can answer); --dry-run prints the UpdateService request and changes nothing. Then it
-- waits (ECS_WAIT_SECONDS, 600; 0 to skip) until the new deployment has completed.
--
-- Environment: AWS credentials (as for s3), AWS_REGION; ECS_CLUSTER (clubio-production),
-- ECS_SERVICE (clubio-api), ECS_TASK_FAMILY (clubio-api), ECS_WAIT_SECONDS (600),
-- AWS_ENDPOINT_URL_ECS (another ECS endpoint, e.g. the sandbox's stand-in).
local env, aws, cjson, clubio, log, time = require "env", require "aws", require "cjson", require "clubio", require "log", require "time"
local job = require "clubio.job"

local cluster = env.get("ECS_CLUSTER", "clubio-production")
local service = env.get("ECS_SERVICE", "clubio-api")
local family = env.get("ECS_TASK_FAMILY", "clubio-api")
local wait_seconds = tonumber(env.get("ECS_WAIT_SECONDS", "600"))
if not wait_seconds or wait_seconds < 0 then
  clubio.fail{message = "ECS_WAIT_SECONDS must be a number of seconds >= 0", class = "config"}
end
local version = require("clubio.args").parse(arg, {max = 1, usage = "VERSION"})[1]

local TARGET = "AmazonEC2ContainerServiceV20141113."
-- One ECS call; a non-200 answer raises a structured error naming the action and what ECS said.
local function ecs(action, body)
  local ok, r = pcall(aws.request, {service = "ecs", method = "POST", path = "/",
                                    headers = {["X-Amz-Target"] = TARGET .. action,
                                               ["Content-Type"] = "application/x-amz-json-1.1"},
                                    body = cjson.encode(body), timeout = 30})
  if not ok then
    if clubio.is_error(r) and (r.hint == nil or r.hint == "") then
      r.hint = "check the network path to ECS (AWS_ENDPOINT_URL_ECS, AWS_REGION) and retry"
    end
    error(r, 0)
  end
  if r.status == 200 then return cjson.decode(r.body) end
  local okj, e = pcall(cjson.decode, r.body or "")
  e = okj and type(e) == "table" and e or {}
  local typ = tostring(e.__type or ""):match("([^#]+)$") or ""
  local msg = e.message or e.Message or ("HTTP " .. r.status)
  local class, hint = "failure", nil
  if r.status == 403 or r.status == 401 or typ:match("AccessDenied") or typ:match("Signature") or typ:match("Token") then
    class, hint = "config", "check the AWS credentials and that they may call ecs:" .. action
  elseif r.status >= 500 or typ == "ServerException" or typ == "ThrottlingException" then
    hint = "ECS had a problem; nothing was changed by this call; retry in a minute"
  elseif typ == "ServiceNotFoundException" or typ == "ClusterNotFoundException" then
    class, hint = "config", "check ECS_CLUSTER (" .. cluster .. ") and ECS_SERVICE (" .. service .. ")"
  end
  clubio.fail{message = string.format("ecs %s failed (%d %s): %s", action, r.status, typ ~= "" and typ or "error", msg),
              class = class, code = "ecs." .. (typ ~= "" and typ or "http_" .. r.status), hint = hint,
              retryable = r.status >= 500 or typ == "ThrottlingException"}
end

local function revision_of(arn) return tonumber(tostring(arn):match(":(%d+)$")) end
local function name_of(arn) return tostring(arn):match("task%-definition/(.+)$") or tostring(arn) end

local function describe_service()
  local d = ecs("DescribeServices", {cluster = cluster, services = {service}})
  local s = d.services and d.services[1]
  if not s then
    local why = d.failures and d.failures[1] and d.failures[1].reason or "not found"
    clubio.fail{message = string.format("service %s in cluster %s: %s", service, cluster, why), class = "config",
                code = "ecs.service_not_found", hint = "check ECS_CLUSTER and ECS_SERVICE (and AWS_REGION)"}
  end
  return s
end

-- no VERSION: the recent revisions and the deployed one
if not version then
  local list = ecs("ListTaskDefinitions", {familyPrefix = family, sort = "DESC", maxResults = 10})
  local s = describe_service()
  local current = name_of(s.taskDefinition)
  local revisions = {}
  for i, arn in ipairs(list.taskDefinitionArns or {}) do
    revisions[i] = {task_definition = name_of(arn), revision = revision_of(arn), arn = arn, deployed = name_of(arn) == current}
  end
  if clubio.flags.json then
    io.stdout:write(cjson.encode{ok = true, cluster = cluster, service = service, deployed = current,
                                 deployments = s.deployments, revisions = revisions}, "\n")
    return 0
  end
  print(string.format("service %s in cluster %s runs %s (%s/%s tasks running)", service, cluster, current,
                      tostring(math.tointeger(s.runningCount) or s.runningCount), tostring(math.tointeger(s.desiredCount) or s.desiredCount)))
  if #revisions == 0 then print("no task definitions with the family prefix " .. family); return 0 end
  print(string.format("\n%-8s  %-28s  %s", "REVISION", "TASK DEFINITION", ""))
  for _, r in ipairs(revisions) do
    print(string.format("%-8s  %-28s  %s", tostring(r.revision), r.task_definition, r.deployed and "<- deployed" or ""))
  end
  print("\nroll back with: clubio-dr run rollback-deployment REVISION")
  return 0
end

-- VERSION: 41 or clubio-api:41
local rev = tonumber(version:match("^(%d+)$") or version:match("^" .. family:gsub("%W", "%%%0") .. ":(%d+)$"))
if not rev or rev < 1 then
  clubio.fail{message = "'" .. version .. "' is not a task definition revision of " .. family, class = "usage",
              hint = "give the revision number (e.g. 41 or " .. family .. ":41); list them with `clubio-dr run rollback-deployment`"}
end
local target = family .. ":" .. math.tointeger(rev)

local J = job.new("rollback-deployment")
local function read_only(title, plan, fn) return J:step(title, {plan = plan, dry = fn}, fn) end

local s = read_only("check the service", string.format("DescribeServices %s/%s", cluster, service), describe_service)
local current = name_of(s.taskDefinition)
read_only("check " .. target, "DescribeTaskDefinition " .. target, function()
  local ok, e = pcall(ecs, "DescribeTaskDefinition", {taskDefinition = target})
  if not ok then
    if clubio.is_error(e) and e.code == "ecs.ClientException" then
      clubio.fail{message = "there is no task definition " .. target, class = "usage", code = "usage.no_task_definition",
                  hint = "list the revisions with `clubio-dr run rollback-deployment`"}
    end
    error(e, 0)
  end
end)
if current == target then
  return J:finish({cluster = cluster, service = service, task_definition = target, previous = current, changed = false},
                  string.format("%s already runs %s; nothing to do", service, target))
end

local request = {cluster = cluster, service = service, taskDefinition = target}
local undo = string.format("clubio-dr run rollback-deployment %s", current)
local updated = J:step(string.format("update %s to %s", service, target), {
  plan = "ECS UpdateService " .. cjson.encode(request) .. " (now " .. current .. ")",
  destructive = true,
  confirm = string.format("Roll service %s (cluster %s) from %s back to %s?", service, cluster, current, target),
  hint = "the service was not changed unless ECS says otherwise; check with `clubio-dr run rollback-deployment`",
}, function()
  log.info("to undo: " .. undo)
  return ecs("UpdateService", request).service
end)
if J.dry_run then
  io.stdout:write("POST ecs UpdateService " .. cjson.encode(request), "\n")
  return J:finish({cluster = cluster, service = service, task_definition = target, previous = current, request = request},
                  string.format("dry run: would roll %s back from %s to %s; nothing was changed", service, current, target))
end
if name_of(updated and updated.taskDefinition) ~= target then
  clubio.fail{message = string.format("ECS answered UpdateService with %s, not %s", name_of(updated and updated.taskDefinition), target),
              class = "verify", hint = "check the service in the ECS console"}
end

local final = updated
if wait_seconds > 0 then
  final = J:step("wait for the deployment", {plan = string.format("poll DescribeServices until %s is the only deployment and completed (at most %d s)", target, wait_seconds),
                                              hint = "the rollback was requested; ECS may still finish it — check with `clubio-dr run rollback-deployment`"}, function()
    local t0, delay = time.monotonic(), 2
    while true do
      local d = describe_service()
      local deps = d.deployments or {}
      local primary = deps[1]
      for _, x in ipairs(deps) do if x.status == "PRIMARY" then primary = x end end
      if primary and primary.rolloutState == "FAILED" then
        clubio.fail{message = string.format("the deployment of %s failed: %s", target, tostring(primary.rolloutStateReason or "rollout FAILED")),
                    class = "failure", hint = "roll forward again with: " .. undo}
      end
      if name_of(d.taskDefinition) == target and #deps == 1 and primary and (primary.rolloutState == nil or primary.rolloutState == "COMPLETED")
         and d.runningCount == d.desiredCount then
        return d
      end
      if time.monotonic() - t0 >= wait_seconds then
        clubio.fail{message = string.format("%s is not stable after %d s (%d deployment(s), %s/%s running)", service, wait_seconds, #deps,
                                            tostring(d.runningCount), tostring(d.desiredCount)), class = "timeout",
                    hint = "ECS is still deploying " .. target .. "; check again with `clubio-dr run rollback-deployment`"}
      end
      time.sleep(delay)
      delay = math.min(delay * 1.5, 15)
    end
  end)
end
return J:finish({cluster = cluster, service = service, task_definition = target, previous = current, changed = true,
                 running = final and final.runningCount, desired = final and final.desiredCount, undo = undo},
                string.format("%s in %s rolled back from %s to %s%s\nto undo: %s", service, cluster, current, target,
                              wait_seconds > 0 and " (deployment completed)" or " (not waited for)", undo))
