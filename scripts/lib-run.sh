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

# listening PORT: true when something accepts connections on 127.0.0.1:PORT.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# build: bin/runtime and bin/proxy, the proxy's JPEG through libjpeg-turbo
# and PNG through libdeflate when installed, else Go's decoders with a note
# (make already put the tags in GOFLAGS when needed).
build() {
  local tags=
  [[ "${GOFLAGS:-}" == *-tags=* ]] || tags=$(scripts/cgo-tags.sh)
  go build -o bin/runtime ./runtime
  go build $tags -o bin/proxy ./proxy
}

# metrics_port: the proxy's METRICS_PORT (it serves /metrics there, and only
# there). $METRICS_PORT when set; else 9464, the proxy's default, or when
# that is taken (another proxy, a developer's) or is $port, the next free
# port above it, so that two `make run`s on different PORTs do not collide
# (saying so on stderr).
metrics_port() {
  if [ -n "${METRICS_PORT:-}" ]; then
    echo "$METRICS_PORT"
    return
  fi
  local p
  for p in $(seq 9464 9563); do
    if [ "$p" != "$port" ] && ! listening "$p"; then
      [ "$p" = 9464 ] || echo "batchgate: port 9464 is taken (another proxy?): /metrics goes on $p (set METRICS_PORT to choose)" >&2
      echo "$p"
      return
    fi
  done
  echo "batchgate: ports 9464-9563 are all taken; set METRICS_PORT to a free port" >&2
  return 1
}
