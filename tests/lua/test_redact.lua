-- Redaction seen from scripts: a short secret is hidden where it stands as a word but leaves
-- other words alone, with a warning that it is too short (issue 18 item 8); a URL that is a
-- secret is hidden in every form it is printed in, never by its host alone (item 14).
package.path = arg[0]:match("(.*/)") .. "?.lua;" .. package.path
local T = require "testing"
local log, secret, proc = require "log", require "secret", require "proc"
local BIN = os.getenv("CLUBIO_DR_BIN")

T.case("a short secret: hidden as a whole word, not inside other words", function()
  local s = secret.value("wr0ng")
  T.eq(log.redact("check NEON_API_KEY: wr0ng must be a valid key"), "check NEON_API_KEY: *** must be a valid key")
  T.eq(log.redact("wr0ngful wr0ng_x xwr0ng wr0ng"), "wr0ngful wr0ng_x xwr0ng ***")
  T.eq(log.redact("key=wr0ng,"), "key=***,")
  s:wipe()
  local long = secret.value("correct-horse")
  T.eq(log.redact("xcorrect-horsey"), "x***y", "8 characters and more: wherever it occurs")
  long:wipe()
end)

T.case("a short secret is worth a warning (once), naming where it came from, never its value", function()
  local r = proc.run{argv = {BIN, "-e", "local s = require('secret'); s.env('CLUBIO_TEST_SHORT'); s.env('CLUBIO_TEST_SHORT')"},
                     env = {CLUBIO_TEST_SHORT = "k3y9"}}
  T.eq(r.status, 0, r.stderr)
  T.match(r.stderr, "warn  the secret from environment variable CLUBIO_TEST_SHORT is shorter than 8 characters: " ..
                    "messages hide it only where it stands as a whole word; use a longer one")
  local _, n = r.stderr:gsub("shorter than", "")
  T.eq(n, 1, "once: " .. r.stderr)
  T.no_match(r.stderr, "k3y9")
  r = proc.run{argv = {BIN, "-e", "require('secret').env('CLUBIO_TEST_SHORT')"}, env = {CLUBIO_TEST_SHORT = "ab"}}
  T.match(r.stderr, "shorter than 4 characters and cannot be hidden")
  r = proc.run{argv = {BIN, "-e", "require('secret').env('CLUBIO_TEST_SHORT')"}, env = {CLUBIO_TEST_SHORT = "long enough secret"}}
  T.eq(r.stderr, "", "no warning for a long secret")
end)

T.case("a URL that is a secret: hidden with its query, path, userinfo; its host stays readable", function()
  local u = secret.value("https://alice:pw0rd-x@hooks.example.com/services/T000/B000/XXXXsecretTOKEN1234?code=Zx9SecretQuery&v=2#frag")
  T.eq(log.redact("POST https://alice:pw0rd-x@hooks.example.com/services/T000/B000/XXXXsecretTOKEN1234?code=Zx9SecretQuery&v=2#frag"),
       "POST ***")
  -- the forms other code prints
  T.eq(log.redact("http POST https://alice:pw0rd-x@hooks.example.com/services/T000/B000/XXXXsecretTOKEN1234 -> 200"),
       "http POST *** -> 200", "without its query")
  T.eq(log.redact("check the endpoint alice:pw0rd-x@hooks.example.com"), "check the endpoint ***@hooks.example.com")
  T.eq(log.redact("password pw0rd-x"), "password ***")
  T.eq(log.redact("path /services/T000/B000/XXXXsecretTOKEN1234 not found"), "path *** not found")
  T.eq(log.redact("token XXXXsecretTOKEN1234"), "token ***", "a long path segment alone")
  T.eq(log.redact("query code=Zx9SecretQuery&v=2"), "query ***")
  T.eq(log.redact("code Zx9SecretQuery"), "code ***", "a parameter's value alone")
  -- what is not secret stays: the host, other URLs on it, short values, ordinary words
  T.eq(log.redact("hooks.example.com answered 503"), "hooks.example.com answered 503")
  T.eq(log.redact("https://hooks.example.com/other/path"), "https://hooks.example.com/other/path")
  T.eq(log.redact("v=2 services T000"), "v=2 services T000")
  u:wipe()
end)

T.case("a webhook URL at --log-level debug: no form of its secret is printed", function()
  local D = T.tmpdir()
  local pid = proc.run{argv = {"sh", "-c", 'python3 "$0" --port-file "$1" --log "$2" >/dev/null 2>&1 & echo $!',
                               os.getenv("CLUBIO_DR_TEST_DIR") .. "/schedule/webhook_receiver.py", D .. "/port", D .. "/log"},
                       check = true}.stdout:match("%d+")
  local port
  for _ = 1, 600 do
    local f = io.open(D .. "/port")
    if f then port = f:read("l"); f:close() end
    if port and port ~= "" then break end
    require("time").sleep(0.05)
  end
  T.ok(port, "the receiver started")
  local url = "http://bob:pw0rd-y@127.0.0.1:" .. port .. "/services/T000/B000/SlackishSecretToken42?code=Zx9SecretQuery"
  local r = proc.run{argv = {BIN, "--log-level", "debug", "-e", [[
    local http, secret, log = require "http", require "secret", require "log"
    local u = secret.env("DR_WEBHOOK_URL")
    local r = http.request{method = "POST", url = u, body = "{}", headers = {["Content-Type"] = "application/json"}}
    log.info("posted", {status = r.status})
    log.debug("forms: " .. u:reveal():match("^(.-)%?") .. " " .. u:reveal():match("%?(.*)$"))
  ]]}, env = {DR_WEBHOOK_URL = url}}
  proc.run{argv = {"kill", pid}}
  T.eq(r.status, 0, r.stderr)
  T.match(r.stderr, "debug http POST ", "the debug line is there")
  T.match(r.stderr, "posted status=200")
  local f = io.open(D .. "/log")
  local got = f and f:read("a") or ""
  if f then f:close() end
  T.match(got, "SlackishSecretToken42%?code=Zx9SecretQuery", "the receiver got the real URL")
  for _, form in ipairs{"SlackishSecretToken42", "Zx9SecretQuery", "pw0rd%-y", "bob:", "/services/T000/B000"} do
    T.no_match(r.stdout .. r.stderr, form, form)
  end
  proc.run{argv = {"rm", "-rf", D}}
end)

return T.finish()
