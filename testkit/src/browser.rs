//! Headless Chromium for the tests and the benchmark of `fleming ui`: Debian's package
//! (`scripts/ensure-chromium` installs it), or the binary named by `FLEMING_CHROMIUM`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where Chromium is expected.
pub fn chromium_path() -> PathBuf {
    std::env::var_os("FLEMING_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/chromium".into())
}

/// Chromium, headless, with the profile `profile` (give each run a fresh one), reaching
/// nothing but 127.0.0.1: every other host name resolves to nothing, so a page that needs
/// the internet shows it, and no background traffic leaves the machine.
pub fn headless(profile: &Path) -> Command {
    let mut c = Command::new(chromium_path());
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .stdin(Stdio::null());
    c
}
