//! A real S3-compatible server for the tests of remote stores: moto's server (PyPI
//! `moto[server]`, installed by `scripts/ensure-moto`), started on a free port of
//! 127.0.0.1 and stopped on drop. `FLEMING_MOTO_HOME` says where moto is installed
//! (default `~/.cache/fleming/moto`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where `scripts/ensure-moto` installs moto.
pub fn moto_home() -> PathBuf {
    std::env::var_os("FLEMING_MOTO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/fleming/moto"))
}

/// A running S3-compatible server.
pub struct S3Server {
    child: Child,
    port: u16,
}

impl S3Server {
    /// Starts moto's server and waits until it answers.
    pub fn start() -> std::io::Result<S3Server> {
        let bin = moto_home().join("bin/moto_server");
        if !bin.is_file() {
            return Err(std::io::Error::other(format!(
                "{} not found: run scripts/ensure-moto (make test does)",
                bin.display()
            )));
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let server = S3Server { child, port };
        let t = Instant::now();
        while server.request("GET", "/", &[]).is_err() {
            if t.elapsed() > Duration::from_secs(30) {
                return Err(std::io::Error::other("moto's server did not start within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket.
    pub fn create_bucket(&self, name: &str) -> std::io::Result<()> {
        let status = self.request("PUT", &format!("/{name}"), &[])?;
        if status != 200 {
            return Err(std::io::Error::other(format!("creating bucket {name}: HTTP {status}")));
        }
        Ok(())
    }

    /// The environment a client needs to use this server (`object_store`'s `AWS_*`).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// One unsigned HTTP/1.1 request (moto does not check signatures); the status.
    fn request(&self, method: &str, path: &str, body: &[u8]) -> std::io::Result<u16> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        )?;
        s.write_all(body)?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        answer
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {answer:?}")))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
