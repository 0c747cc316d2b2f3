-- wrk script: every request carries `Authorization: Bearer <token>`, rotating through all the
-- tokens of a file (one per line). Each thread starts at a different offset and walks the
-- whole list, so every account is asked for in turn.
--
--   wrk -t1 -c64 -d60s --latency -s bench/rotate_tokens.lua http://127.0.0.1:8080/live/seg1.ts -- TOKENS_FILE
--
-- The tokens file is the first script argument, or $TOKENS_FILE. $TOKENS_START (default 0)
-- shifts where the threads start in the list.
-- Non-2xx responses are counted by status in response() and printed in done(), with a
-- machine-readable `soak:` line that bench/soak.sh reads.

local threads = {}

function setup(thread)
   thread:set("id", #threads)
   table.insert(threads, thread)
end

function init(args)
   local path = args[1] or os.getenv("TOKENS_FILE")
   if not path or path == "" then
      error("rotate_tokens.lua: give the tokens file as `-- FILE` or in $TOKENS_FILE")
   end
   local file = assert(io.open(path, "r"))
   -- Requests are formatted once here; request() only hands them out.
   prepared = {}
   for line in file:lines() do
      local token = line:gsub("%s+$", "")
      if token ~= "" then
         prepared[#prepared + 1] = wrk.format(nil, nil, {
            ["Host"] = wrk.port and (wrk.host .. ":" .. wrk.port) or wrk.host,
            ["Authorization"] = "Bearer " .. token,
         })
      end
   end
   file:close()
   if #prepared == 0 then
      error("rotate_tokens.lua: no tokens in " .. path)
   end
   -- Per-thread state, read back in done() with thread:get().
   -- TOKENS_START lets a series of runs go on where the last one stopped (a warm-up that
   -- must send every token once, over several runs).
   next_index = (id * 7919 + (tonumber(os.getenv("TOKENS_START")) or 0)) % #prepared
   statuses = {}
   non2xx = 0
   tokens = #prepared
end

function request()
   next_index = next_index % tokens + 1
   return prepared[next_index]
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      statuses[status] = (statuses[status] or 0) + 1
      non2xx = non2xx + 1
   end
end

function done(summary, latency, requests)
   local total, by_status = 0, {}
   for _, thread in ipairs(threads) do
      total = total + (thread:get("non2xx") or 0)
      for status, count in pairs(thread:get("statuses") or {}) do
         by_status[status] = (by_status[status] or 0) + count
      end
   end
   local codes = {}
   for status in pairs(by_status) do codes[#codes + 1] = status end
   table.sort(codes)
   io.write(string.format("non-2xx responses: %d\n", total))
   for _, status in ipairs(codes) do
      io.write(string.format("  HTTP %d: %d\n", status, by_status[status]))
   end
   local e = summary.errors
   local socket_errors = e.connect + e.read + e.write + e.timeout
   io.write(string.format(
      "soak: requests=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d non2xx=%d socket_errors=%d tokens=%d\n",
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
      latency.max, total, socket_errors, threads[1] and threads[1]:get("tokens") or 0))
end
