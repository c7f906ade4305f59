# Coder template snippet: start the Boundary agent when the workspace starts, and make the AI
# CLIs run inside a boundary. Paste into your template beside the coder_agent resource; the
# workspace image must have the `boundary` package (`cargo xtask dist`) and your policy in
# /etc/boundary/config.yaml (see examples/), and the container must give the agent its
# capabilities and a writable cgroup v2 hierarchy (README, "A workspace image").

resource "coder_script" "boundary_agent" {
  agent_id     = coder_agent.main.id
  display_name = "Boundary"
  icon         = "/icon/shield.svg"
  run_on_start = true
  # The agent must be up before any AI CLI starts.
  start_blocks_login = true
  script = <<-EOT
    set -eu
    sudo boundary validate /etc/boundary/config.yaml
    # Already running when the image's entrypoint is /usr/sbin/boundary-entrypoint.
    if [ ! -S /run/boundary/agent.sock ]; then
      sudo systemctl start boundary-agent 2>/dev/null || \
        (sudo sh -c 'nohup boundary agent --config /etc/boundary/config.yaml \
          >>/var/log/boundary/agent.log 2>&1 &')
    fi
    for i in $(seq 1 100); do [ -S /run/boundary/agent.sock ] && break; sleep 0.1; done
    boundary status
  EOT
}

# Wrap the AI CLIs: every invocation by the user goes through the boundary.
resource "coder_script" "boundary_wrappers" {
  agent_id     = coder_agent.main.id
  display_name = "Boundary wrappers"
  run_on_start = true
  script = <<-EOT
    mkdir -p "$HOME/.local/bin"
    for cli in claude codex; do
      real="$(command -v "$cli" || true)"
      [ -n "$real" ] || continue
      printf '#!/bin/sh\nexec boundary run -- %s "$@"\n' "$real" > "$HOME/.local/bin/$cli"
      chmod +x "$HOME/.local/bin/$cli"
    done
  EOT
}

# Point the AI CLIs at Bridge: with Boundary denying the provider APIs, all AI traffic goes
# through the gateway. (Inside a session, BOUNDARY_SESSION_ID names the session; a wrapper
# that sends it as the x-bridge-session header lets Bridge join its records to it.)
resource "coder_env" "bridge_base_url" {
  agent_id = coder_agent.main.id
  name     = "ANTHROPIC_BASE_URL"
  value    = "https://bridge.example.internal:8787"
}
