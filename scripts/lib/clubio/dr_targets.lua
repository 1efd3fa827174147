-- clubio.dr, pluggable targets: where the application is pointed at failover (an env file, AWS
-- SSM Parameter Store or Secrets Manager, Route 53).
-- A part of clubio.dr: require("clubio.dr") calls this file's function with its table.
return function(M)
  local log, clubio, cjson = require "log", require "clubio", require "cjson"
  local getenv = require("clubio.dr_util").getenv

  -- ---- pluggable targets -------------------------------------------------------------------

  -- Writes NAME='value' into an env file atomically (pipe.write_file: a 0600 file beside it, then rename), keeping
  -- its other lines.
  function M.write_env_file(path, name, value)
    local lines, found = {}, false
    local f = io.open(path, "r")
    if f then
      for line in f:lines() do
        if line:match("^%s*export%s+" .. name .. "=") or line:match("^%s*" .. name .. "=") then
          if not found then lines[#lines + 1] = name .. "='" .. value:gsub("'", "'\\''") .. "'" end
          found = true
        else
          lines[#lines + 1] = line
        end
      end
      f:close()
    end
    if not found then lines[#lines + 1] = name .. "='" .. value:gsub("'", "'\\''") .. "'" end
    local ok, werr = pcall(require("pipe").write_file, path, table.concat(lines, "\n") .. "\n", {overwrite = true})
    if not ok then
      clubio.fail{message = "cannot replace " .. path .. ": " .. (type(werr) == "table" and werr.message or tostring(werr)),
                  code = "dr.app_target", hint = "check the folder's permissions"}
    end
  end

  local function aws_json(service, target, body, region)
    local aws = require "aws"
    local r = aws.request{service = service, region = region, method = "POST", path = "/",
                          headers = {["X-Amz-Target"] = target, ["Content-Type"] = "application/x-amz-json-1.1"},
                          body = cjson.encode(body), timeout = 30}
    if r.status < 200 or r.status > 299 then
      clubio.fail{message = string.format("%s %s answered HTTP %d: %s", service, target:match("[^.]+$"), r.status,
                                          log.redact((r.body or ""):sub(1, 200))),
                  code = "dr.aws", retryable = r.status >= 500,
                  hint = "check the AWS credentials' permissions and the region"}
    end
    return r
  end

  -- Points the application at `url`: DR_APP_TARGET is env-file:PATH, ssm:PARAMETER-NAME or none.
  function M.update_app_target(ctx, url)
    local t = ctx.cfg.app_target
    if not t or t == "none" then
      log.warn("no application target configured (DR_APP_TARGET): point the application at the DR database by hand",
               {database = M.display(url)})
      return {skipped = true}
    end
    local kind, where = t:match("^([%w-]+):(.+)$")
    if kind == "env-file" then
      M.write_env_file(where, ctx.cfg.app_target_var, tostring(url))
      return {kind = kind, path = where, var = ctx.cfg.app_target_var, database = M.display(url)}
    elseif kind == "ssm" then
      aws_json("ssm", "AmazonSSM.PutParameter",
               {Name = where, Value = tostring(url), Type = "SecureString", Overwrite = true})
      return {kind = kind, parameter = where, database = M.display(url)}
    end
    clubio.fail{message = "DR_APP_TARGET '" .. t .. "' is not env-file:PATH, ssm:NAME or none", class = "config",
                code = "config.dr_app_target", hint = "e.g. DR_APP_TARGET=env-file:/etc/clubio/db.env or ssm:/clubio/prod/DATABASE_URL"}
  end

  -- Route53 UPSERT of DR_ROUTE53_RECORD to DR_ROUTE53_VALUE in zone DR_ROUTE53_ZONE_ID.
  function M.update_routing(ctx, value)
    local c = ctx.cfg
    value = value or c.route53_value
    if not c.route53_zone or not c.route53_record or not value then
      log.warn("no traffic routing configured (DR_ROUTE53_ZONE_ID, DR_ROUTE53_RECORD, DR_ROUTE53_VALUE): update DNS or the load balancer by hand")
      return {skipped = true}
    end
    local function esc(s) return (tostring(s):gsub("&", "&amp;"):gsub("<", "&lt;"):gsub(">", "&gt;")) end
    local body = string.format([[<?xml version="1.0" encoding="UTF-8"?>
<ChangeResourceRecordSetsRequest xmlns="https://route53.amazonaws.com/doc/2013-04-01/"><ChangeBatch><Comment>clubio-dr failover</Comment><Changes><Change><Action>UPSERT</Action><ResourceRecordSet><Name>%s</Name><Type>%s</Type><TTL>%d</TTL><ResourceRecords><ResourceRecord><Value>%s</Value></ResourceRecord></ResourceRecords></ResourceRecordSet></Change></Changes></ChangeBatch></ChangeResourceRecordSetsRequest>]],
      esc(c.route53_record), esc(c.route53_type), c.route53_ttl, esc(value))
    local zone = c.route53_zone:gsub("^/?hostedzone/", "")
    local r = require("aws").request{service = "route53", method = "POST", path = "/2013-04-01/hostedzone/" .. zone .. "/rrset/",
                                     headers = {["Content-Type"] = "application/xml"}, body = body, timeout = 30}
    if r.status < 200 or r.status > 299 then
      clubio.fail{message = string.format("route53 ChangeResourceRecordSets answered HTTP %d: %s", r.status,
                                          log.redact((r.body or ""):sub(1, 200))),
                  code = "dr.route53", retryable = r.status >= 500,
                  hint = "check the hosted zone id, the record name and the credentials' route53 permissions"}
    end
    return {zone = zone, record = c.route53_record, type = c.route53_type, value = value,
            change_id = (r.body or ""):match("<Id>([^<]+)</Id>")}
  end

  function M.notify(ctx, text, fields)
    log.info(text, fields)
    if not getenv(ctx.cfg.webhook_env) then return {webhook = false} end
    -- webhook URLs carry their token in the path: a secret (errors name the host only)
    local url = require("secret").env(ctx.cfg.webhook_env)
    local ok, r = pcall(require("http").request, {method = "POST", url = url, headers = {["Content-Type"] = "application/json"},
                                                   body = cjson.encode({text = text, fields = fields}), timeout = 10})
    if not ok then
      clubio.fail{message = "the webhook (" .. ctx.cfg.webhook_env .. ") did not answer: " ..
                            (clubio.is_error(r) and r.message or tostring(r)),
                  code = "dr.webhook", retryable = true,
                  hint = "the failover itself is done; tell the team by hand and check the webhook URL"}
    end
    if r.status < 200 or r.status > 299 then
      clubio.fail{message = "the webhook (" .. ctx.cfg.webhook_env .. ") answered HTTP " .. r.status, code = "dr.webhook",
                  hint = "the failover itself is done; tell the team by hand and check the webhook URL"}
    end
    return {webhook = true, status = r.status}
  end
end
