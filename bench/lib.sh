# Helpers shared by the bench scripts (sourced, not run).

# Exit with a message unless every named tool is on PATH or an executable path.
need_tools() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "$tool" ] || { echo "missing $tool" >&2; exit 1; }
  done
}

# A TCP port on 127.0.0.1 that is free right now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
