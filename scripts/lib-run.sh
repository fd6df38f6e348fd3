# lib-run.sh: shell functions shared by run.sh and run-ab.sh (sourced).
# They read $port and the pids array of the caller.

# ready: GET /readyz with bash alone (no curl needed), true on 200.
ready() {
  local status
  { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null || return 1
  printf 'GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
  read -r -t 2 _ status _ <&3 || status=
  exec 3<&- 3>&-
  [ "$status" = 200 ]
}

# alive: true while every process in pids runs.
alive() { for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || return 1; done; }
