//! `llm-bridge serve`: load bridge.yaml and run the gateway until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use bridge::config::BridgeConfig;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
llm-bridge serve              # 127.0.0.1:8787, ./bridge.db, provider keys from the environment\n  \
llm-bridge serve --config /etc/bridge/bridge.yaml\n  \
llm-bridge serve --config bridge.yaml --listen 0.0.0.0:8787")]
pub struct ServeArgs {
    /// Gateway config (bridge.yaml: listen, store, spool_dir, providers, pricing, tls,
    /// metrics). Without it,
    /// Bridge listens on 127.0.0.1:8787 with the SQLite store bridge.db in this directory, and
    /// configures a provider only if ANTHROPIC_API_KEY / OPENAI_API_KEY / GEMINI_API_KEY
    /// (or GOOGLE_API_KEY) is set.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Address to listen on (IP:PORT), overriding the config's `listen:`. Port 0 picks a free
    /// port; the address actually bound is logged.
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<SocketAddr>,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = BridgeConfig::load(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    bridge::server::serve(config, shutdown_signal())
        .await
        .context("llm-bridge serve")
}

/// Completes on Ctrl-C or SIGTERM (what container runtimes and systemd send).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
