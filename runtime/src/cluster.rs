//! A run spread over several `fleming run` processes, on one machine or several.
//!
//! The processes are listed as timely lists them: one `host:port` per line of a hosts file,
//! process 0 first. Every process runs the same pipeline on the same store: the stages
//! that are not dataflows are shared out by the key lock (whichever process takes a key
//! computes it; the others reuse it), and each dataflow stage runs on every process at
//! once, as one timely computation whose workers are the processes' threads. Each process
//! feeds its share of the input; process 0 gathers the result and alone commits it.
//!
//! [`Cluster::connect`] opens the connections a timely cluster needs (every pair of
//! processes, with the lower index listening). It differs from timely's own set-up in
//! what a run needs: it gives up after a deadline or on Ctrl-C instead of retrying
//! forever, and every connection first says which stage (by key) it is for, so that two
//! processes never join each other's different computations.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};

use crate::cancel::CancelToken;

/// How long a dataflow stage waits, by default, for every process to join it.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(600);

/// First bytes of every connection between the processes.
const HELLO: &[u8; 16] = b"fleming-cluster1";

/// This process's place in a cluster run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// `host:port` of every process, in index order (timely's hosts file).
    pub addresses: Vec<String>,
    /// This process's index; process 0 commits the outputs of dataflow stages.
    pub process: usize,
    /// How long a dataflow stage waits for the other processes to join it.
    pub connect_timeout: Duration,
    /// What the connections are for: the key of the stage being computed. Processes
    /// computing different things refuse each other.
    pub session: String,
}

impl Cluster {
    /// The cluster of the processes listed in `hosts` (one `host:port` per line; blank
    /// lines and `#` comments are skipped), as process `process`.
    pub fn from_hosts_file(hosts: &Path, process: usize) -> anyhow::Result<Cluster> {
        let text =
            std::fs::read_to_string(hosts).with_context(|| format!("reading the hosts file {}", hosts.display()))?;
        let mut addresses = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            if !line.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) {
                bail!("{}:{}: expected `host:port`, found `{line}`", hosts.display(), n + 1);
            }
            addresses.push(line.to_string());
        }
        Cluster::new(addresses, process).with_context(|| format!("in the hosts file {}", hosts.display()))
    }

    /// The cluster of these addresses, as process `process`.
    pub fn new(addresses: Vec<String>, process: usize) -> anyhow::Result<Cluster> {
        if addresses.is_empty() {
            bail!("a cluster needs at least one process address");
        }
        if process >= addresses.len() {
            bail!(
                "this is process {process}, but the cluster has {} (indices 0 to {})",
                addresses.len(),
                addresses.len() - 1
            );
        }
        Ok(Cluster { addresses, process, connect_timeout: DEFAULT_CONNECT_TIMEOUT, session: String::new() })
    }

    /// Number of processes.
    pub fn processes(&self) -> usize {
        self.addresses.len()
    }

    /// Whether this process commits the outputs of dataflow stages.
    pub fn is_leader(&self) -> bool {
        self.process == 0
    }

    /// The same cluster, for the computation named `session` (a stage key).
    pub fn for_session(&self, session: &str) -> Cluster {
        Cluster { session: session.to_string(), ..self.clone() }
    }

    /// Connects this process to every other one: it connects to the lower indices and
    /// accepts the higher ones on its own address. Returns one blocking stream per
    /// process, in index order, `None` at this process's own place (as timely's
    /// `initialize_networking_from_sockets` takes them). Fails when a process has not
    /// joined within [`Cluster::connect_timeout`], on Ctrl-C, or when a process is
    /// computing another stage.
    pub fn connect(&self, cancel: &CancelToken) -> anyhow::Result<Vec<Option<TcpStream>>> {
        let me = self.process;
        let n = self.processes();
        let deadline = Instant::now() + self.connect_timeout;
        let mut streams: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
        let listener = if me + 1 < n {
            let l = bind(&self.addresses[me])?;
            l.set_nonblocking(true).context("listening")?;
            Some(l)
        } else {
            None
        };
        let mut lower: Vec<usize> = (0..me).collect();
        let waiting = |streams: &[Option<TcpStream>]| -> Vec<usize> {
            (0..n).filter(|&i| i != me && streams[i].is_none()).collect()
        };
        while !waiting(&streams).is_empty() {
            cancel.check()?;
            if Instant::now() > deadline {
                bail!(
                    "process {me}: processes {:?} of the cluster did not join within {:?} (are they running `fleming run` on the same pipeline, with the same hosts file?)",
                    waiting(&streams),
                    self.connect_timeout
                );
            }
            let mut progressed = false;
            // Connect to the lower indices that listen by now.
            let mut still = Vec::new();
            for i in lower.drain(..) {
                match connect_once(&self.addresses[i]) {
                    Some(mut s) => {
                        self.greet(&mut s, i)?;
                        streams[i] = Some(s);
                        progressed = true;
                    }
                    None => still.push(i),
                }
            }
            lower = still;
            // Accept the higher ones.
            if let Some(l) = &listener {
                match l.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).context("accepting a connection")?;
                        let from = self.answer(&mut s)?;
                        if from <= me || from >= n || streams[from].is_some() {
                            bail!("process {me}: unexpected connection from process {from}");
                        }
                        streams[from] = Some(s);
                        progressed = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(anyhow!(e).context(format!("process {me}: accepting connections"))),
                }
            }
            if !progressed {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        for s in streams.iter().flatten() {
            s.set_read_timeout(None).context("configuring a connection")?;
            s.set_nodelay(true).context("configuring a connection")?;
        }
        Ok(streams)
    }

    /// The connecting side of the handshake: says who it is and what for, and checks the
    /// answer.
    fn greet(&self, s: &mut TcpStream, to: usize) -> anyhow::Result<()> {
        s.set_read_timeout(Some(Duration::from_secs(30))).context("configuring a connection")?;
        write_hello(s, self.process, &self.session).with_context(|| format!("greeting process {to}"))?;
        let (index, session) = read_hello(s).with_context(|| format!("reading the answer of process {to}"))?;
        self.check_peer(to, index, &session)
    }

    /// The accepting side: reads who connects and what for, and answers.
    fn answer(&self, s: &mut TcpStream) -> anyhow::Result<usize> {
        s.set_read_timeout(Some(Duration::from_secs(30))).context("configuring a connection")?;
        let (index, session) = read_hello(s).context("reading a greeting")?;
        write_hello(s, self.process, &self.session).context("answering a greeting")?;
        self.check_peer(index, index, &session)?;
        Ok(index)
    }

    fn check_peer(&self, expected: usize, index: usize, session: &str) -> anyhow::Result<()> {
        if index != expected {
            bail!("process {}: the address of process {expected} is answered by process {index}", self.process);
        }
        if session != self.session {
            bail!(
                "process {} computes stage key {} but process {index} computes {session}: every process of a cluster must run the same pipeline on the same store",
                self.process,
                self.session
            );
        }
        Ok(())
    }
}

fn bind(address: &str) -> anyhow::Result<TcpListener> {
    let addrs: Vec<_> = address.to_socket_addrs().with_context(|| format!("resolving {address}"))?.collect();
    TcpListener::bind(&addrs[..])
        .with_context(|| format!("listening on {address} (this process's line of the hosts file)"))
}

fn connect_once(address: &str) -> Option<TcpStream> {
    let addrs = address.to_socket_addrs().ok()?;
    addrs.into_iter().find_map(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok())
}

fn write_hello(s: &mut TcpStream, index: usize, session: &str) -> io::Result<()> {
    let mut msg = Vec::with_capacity(32 + session.len());
    msg.extend_from_slice(HELLO);
    msg.extend_from_slice(&(index as u64).to_le_bytes());
    msg.extend_from_slice(&(session.len() as u32).to_le_bytes());
    msg.extend_from_slice(session.as_bytes());
    s.write_all(&msg)?;
    s.flush()
}

fn read_hello(s: &mut TcpStream) -> anyhow::Result<(usize, String)> {
    let mut magic = [0u8; 16];
    s.read_exact(&mut magic)?;
    if &magic != HELLO {
        bail!("not a fleming cluster process (another program listens on this address?)");
    }
    let mut index = [0u8; 8];
    s.read_exact(&mut index)?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > 4096 {
        bail!("malformed greeting");
    }
    let mut session = vec![0u8; len];
    s.read_exact(&mut session)?;
    let index = usize::try_from(u64::from_le_bytes(index)).map_err(|_| anyhow!("malformed greeting"))?;
    Ok((index, String::from_utf8(session).map_err(|_| anyhow!("malformed greeting"))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_ports(n: usize) -> Vec<String> {
        let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
        listeners.iter().map(|l| l.local_addr().expect("addr").to_string()).collect()
    }

    #[test]
    fn three_processes_connect_pairwise() {
        let addresses = free_ports(3);
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let c = Cluster::new(addresses.clone(), i).expect("cluster").for_session("k1");
                std::thread::spawn(move || c.connect(&CancelToken::new()))
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            let streams = h.join().expect("thread").expect("connected");
            assert_eq!(streams.len(), 3);
            for (j, s) in streams.iter().enumerate() {
                assert_eq!(s.is_some(), i != j, "process {i}, slot {j}");
            }
        }
    }

    #[test]
    fn a_process_on_another_stage_is_refused() {
        let addresses = free_ports(2);
        let a = Cluster::new(addresses.clone(), 0).expect("cluster").for_session("stage-a");
        let b = Cluster::new(addresses, 1).expect("cluster").for_session("stage-b");
        let ha = std::thread::spawn(move || a.connect(&CancelToken::new()).map(|_| ()));
        let err = b.connect(&CancelToken::new()).expect_err("refused");
        assert!(format!("{err:#}").contains("must run the same pipeline"), "{err:#}");
        assert!(ha.join().expect("thread").is_err());
    }

    #[test]
    fn a_missing_process_times_out() {
        let addresses = free_ports(2);
        let mut c = Cluster::new(addresses, 1).expect("cluster");
        c.connect_timeout = Duration::from_millis(300);
        let err = c.connect(&CancelToken::new()).expect_err("timeout");
        assert!(format!("{err:#}").contains("processes [0] of the cluster did not join"), "{err:#}");
    }

    #[test]
    fn hosts_files_are_checked() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("hosts");
        std::fs::write(&f, "# cluster\n127.0.0.1:7000\n\n127.0.0.1:7001  # second\n").expect("write");
        let c = Cluster::from_hosts_file(&f, 1).expect("hosts");
        assert_eq!(c.addresses, vec!["127.0.0.1:7000", "127.0.0.1:7001"]);
        assert!(!c.is_leader());
        let err = Cluster::from_hosts_file(&f, 2).expect_err("index");
        assert!(format!("{err:#}").contains("the cluster has 2"), "{err:#}");
        std::fs::write(&f, "127.0.0.1:7000\nlocalhost\n").expect("write");
        let err = Cluster::from_hosts_file(&f, 0).expect_err("bad line");
        assert!(format!("{err:#}").contains(":2: expected `host:port`, found `localhost`"), "{err:#}");
    }
}
