//! `fleming ui`: the pipeline in a browser.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use fleming_runtime::op::Registry;

use super::{Cli, load_pipeline, open_store};

/// Arguments of `fleming ui`.
#[derive(Args, Debug)]
pub struct UiArgs {
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// Port (0: any free port; the address is printed on the first line).
    #[arg(long, default_value_t = 8470)]
    pub port: u16,
    /// Address to listen on. Any address but loopback needs a token.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// The token requests must carry (default off loopback: a random one, printed).
    #[arg(long, env = "FLEMING_UI_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Runs `fleming ui` until Ctrl-C.
pub fn ui(cli: &Cli, args: &UiArgs, registry: Arc<dyn Registry>) -> anyhow::Result<i32> {
    let pipeline = match load_pipeline(&args.pipeline, registry.as_ref()) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let store = open_store(cli, &pipeline)?;
    let token = match &args.token {
        Some(t) if t.trim().is_empty() => anyhow::bail!("the token is empty"),
        Some(t) => Some(t.clone()),
        None if !args.bind.is_loopback() => Some(random_token()?),
        None => None,
    };
    crate::ui::serve(
        crate::ui::UiOptions {
            pipeline: args.pipeline.clone(),
            store,
            addr: SocketAddr::new(args.bind, args.port),
            token,
        },
        registry,
    )?;
    Ok(0)
}

/// 128 random bits from the kernel, in hex.
fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
