# shellcheck shell=bash
# serve.sh -- start attnlm-server from a shell script and learn its port from its port file.
# Sourced by bench/http.sh, tests/lib/client.sh (the npm client tests), deploy/test-install.sh and
# deploy/test-image.sh (tests/lib/attnlm_server.py does the same for Python).
#
#   serve_start PORT_FILE LOG COMMAND [ARG...]
#       Starts COMMAND in the background, its stderr to LOG, and waits until the port has been
#       written to PORT_FILE.  COMMAND must name that file to the server (--port-file, or
#       ATTNLM_PORT_FILE in its environment); the two paths differ when COMMAND runs under
#       chroot.  The server writes the file once it listens, through a rename, so a file that
#       exists is whole.  Sets pid and port.  Returns 1, with LOG on stderr, if COMMAND exits
#       first or SERVE_TIMEOUT seconds (default 30) pass; pid is then still set if it runs.
#   serve_log_has PATTERN
#       Whether the LOG of the last serve_start matches the grep PATTERN, waiting up to 5 s for
#       it: the startup line ("attnlm: listening on ...") follows the port file by a moment.
#       For messages and checks of them; the port comes from the port file.
#   serve_stop [SIGNAL]
#       Sends SIGNAL (default TERM) to $pid, then serve_wait.
#   serve_wait
#       Waits for $pid to exit (after a signal sent otherwise); sets rc to its exit status and
#       clears pid.
# pid, port and rc are the caller's variables:
# shellcheck disable=SC2034

serve_start() {
  local file="$1" log="$2" i
  shift 2
  serve_log="$log"
  rm -f "$file"
  "$@" 2>"$log" &
  pid=$!
  port=
  for ((i = 0; i < ${SERVE_TIMEOUT:-30} * 20; i++)); do
    if [ -s "$file" ]; then
      port="$(head -n 1 "$file")"
      [[ "$port" =~ ^[0-9]+$ ]] && return 0
      echo "serve_start: $file holds '$port', not a port" >&2
      port=
      return 1
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  cat "$log" >&2
  if kill -0 "$pid" 2>/dev/null; then
    echo "serve_start: no port in $file after ${SERVE_TIMEOUT:-30} s: $*" >&2
  else
    wait "$pid" || true
    pid=
    echo "serve_start: the server exited before listening: $*" >&2
  fi
  return 1
}

serve_log_has() {
  local i
  for ((i = 0; i < 100; i++)); do
    grep -q -- "$1" "$serve_log" && return 0
    sleep 0.05
  done
  return 1
}

serve_stop() {
  kill -"${1:-TERM}" "$pid" 2>/dev/null || true
  serve_wait
}

serve_wait() {
  rc=0
  wait "$pid" || rc=$?
  pid=
}
