-- wrk script for bench/http.sh: POST /v1/score with a fixed 230-byte English text
-- (original prose; http.sh checks the server counts 230 input tokens before it runs wrk).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"text":"It was a cold grey morning when the ship left the harbour, and the men stood along the rail in silence, each of them thinking of the long months ahead and of the whales that waited out beyond the edge of the known sea, so far off."}'
