//! `sensor-auth proxy`: the command-line face of [`super::Proxy`].
//!
//! ```text
//! sensor-auth proxy --role control --listen 127.0.0.1:1502 --peer 192.0.2.10:7502 --store keys.redb --onu 3
//! sensor-auth proxy --role field   --listen 0.0.0.0:7502   --device 127.0.0.1:502 --store keys.redb --onu 3
//! sensor-auth proxy --config proxy.toml --show-config
//! ```
//!
//! Flags override the configuration file ([`super::DEFAULT_CONFIG`] documents every key).

use super::{LogFormat, Proxy, ProxyConfig, Role};
use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Arguments of `sensor-auth proxy`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ProxyArgs {
    /// Configuration file (TOML; every key optional, see --show-config).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Which end: `control` (beside the SCADA master) or `field` (beside the device).
    #[arg(long, value_enum)]
    pub role: Option<Role>,
    /// Control: Modbus/TCP client listener; field: link listener.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Control: the field proxy's link address.
    #[arg(long, value_name = "ADDR")]
    pub peer: Option<SocketAddr>,
    /// Field: the Modbus/TCP device.
    #[arg(long, value_name = "ADDR")]
    pub device: Option<SocketAddr>,
    /// The key store file.
    #[arg(long, value_name = "FILE")]
    pub store: Option<PathBuf>,
    /// Which ONU's pool the pads come from.
    #[arg(long)]
    pub onu: Option<u16>,
    /// KEK file of an encrypted store (else QPON_KEK, else unencrypted).
    #[arg(long, value_name = "FILE")]
    pub kek_file: Option<PathBuf>,
    /// Forward only this unit id (repeatable; replaces the file's list).
    #[arg(long = "allow-unit", value_name = "UNIT")]
    pub allow_unit: Vec<u8>,
    /// Status endpoint address (GET /status, /metrics).
    #[arg(long, value_name = "ADDR")]
    pub status_listen: Option<SocketAddr>,
    /// Log format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Print the effective configuration (TOML) and exit.
    #[arg(long)]
    pub show_config: bool,
}

impl ProxyArgs {
    /// The effective configuration: the file (or the defaults) with the flags applied.
    pub fn config(&self) -> anyhow::Result<ProxyConfig> {
        let mut c = match &self.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                ProxyConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))?
            }
            None => ProxyConfig::default(),
        };
        if let Some(v) = self.role {
            c.role = Some(v);
        }
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = self.peer {
            c.peer = Some(v);
        }
        if let Some(v) = self.device {
            c.device = Some(v);
        }
        if let Some(v) = &self.store {
            c.store.path = v.clone();
        }
        if let Some(v) = self.onu {
            c.store.onu = v;
        }
        if let Some(v) = &self.kek_file {
            c.store.kek_file = v.clone();
        }
        if !self.allow_unit.is_empty() {
            c.allowed_units = self.allow_unit.clone();
        }
        if let Some(v) = self.status_listen {
            c.status_listen = Some(v);
        }
        if let Some(v) = self.log_format {
            c.log.format = v;
        }
        Ok(c)
    }
}

/// Runs `sensor-auth proxy` on a runtime of its own (for a synchronous `main`).
pub fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let rt =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(run_async(args))
}

/// Runs `sensor-auth proxy` until SIGINT or SIGTERM (for an async `main`).
pub async fn run_async(args: ProxyArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    if args.show_config {
        print!("{}", toml::to_string(&config).context("printing the configuration")?);
        return Ok(());
    }
    qpon_node::logging::init(match config.log.format {
        LogFormat::Text => qpon_node::logging::LogFormat::Text,
        LogFormat::Json => qpon_node::logging::LogFormat::Json,
    });
    config.validate()?;
    let pads = super::open_pads(&config)?;
    let proxy = Proxy::bind(config, pads).await?;
    tracing::info!(listen = %proxy.local_addr(), "listening");
    proxy.serve(shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProxyArgs,
    }

    #[test]
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("qpon-proxy-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("p.toml");
        std::fs::write(
            &file,
            "role = \"field\"\ndevice = \"127.0.0.1:502\"\nallowed_units = [1]\n[store]\nonu = 4\n",
        )
        .unwrap();
        let cli = Cli::parse_from([
            "x",
            "--config",
            file.to_str().unwrap(),
            "--role",
            "control",
            "--peer",
            "127.0.0.1:7502",
            "--allow-unit",
            "3",
            "--allow-unit",
            "5",
        ]);
        let c = cli.args.config().unwrap();
        assert_eq!(c.role, Some(Role::Control));
        assert_eq!(c.peer, Some("127.0.0.1:7502".parse().unwrap()));
        assert_eq!(c.allowed_units, [3, 5]);
        assert_eq!(c.store.onu, 4);
        assert_eq!(c.validate().unwrap(), Role::Control);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
