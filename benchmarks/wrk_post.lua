-- wrk script: POST OpenAI chat requests and print a JSON summary line.
--   wrk ... -s wrk_post.lua URL -- MODE SALT [TOKEN]
-- MODE "same": every request is identical (after one priming call, all cache hits);
-- MODE "distinct": every request has a new prompt (all cache misses). SALT keeps prompts of
-- one run apart from any earlier run's; TOKEN, when given, is sent as a bearer key.

local mode, salt, counter = "same", "", 0

local function body(prompt)
  return '{"model":"standin","messages":[{"role":"system","content":"You are a careful assistant."},'
    .. '{"role":"user","content":"' .. prompt .. '"}],"max_tokens":32,"temperature":0}'
end

function init(args)
  mode = args[1] or "same"
  salt = args[2] or ""
  if args[3] ~= nil and args[3] ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. args[3]
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = body("What is the capital of France? Answer in one sentence.")
  if mode == "distinct" then
    request = function()
      counter = counter + 1
      return wrk.format(nil, nil, nil, body("What is the capital of France? (" .. salt .. "-" .. counter .. ")"))
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,'
      .. '"p50_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
