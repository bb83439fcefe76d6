//! Running a timely computation on a stage's workers: `-w` threads in this process, and in
//! a cluster run (`fleming run --hosts`) as many on every process, connected by
//! [`Cluster::connect`] and timely's own network layer.
//!
//! A connection that breaks (a process died) poisons timely's queues: every worker that
//! touches them panics, so the computation ends on every process instead of waiting. Those
//! panics come back here as an error naming the broken connection.

use std::any::Any;
use std::sync::{Mutex, Once};
use std::time::Duration;

use anyhow::anyhow;
use fleming_runtime::CancelToken;
use fleming_runtime::cluster::Cluster;
use fleming_runtime::diagnostic::panic_message;
use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
use timely::communication::allocator::{AllocatorBuilder, ProcessBuilder};
use timely::communication::{Hooks, initialize_from};
use timely::worker::Worker;

/// Runs `func` on every worker (`threads` here; in a cluster, `threads` on each process)
/// and returns what this process's workers returned, in worker order. The workers'
/// global index and count (`worker.index()`, `worker.peers()`) span the cluster.
pub fn execute<T, F>(threads: usize, cluster: Option<&Cluster>, cancel: &CancelToken, func: F) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(&mut Worker) -> T + Send + Sync + 'static,
{
    let threads = threads.max(1);
    let (builders, others): (Vec<AllocatorBuilder>, Box<dyn Any + Send>) = match cluster {
        None => timely::CommunicationConfig::Process(threads)
            .try_build()
            .map_err(|e| anyhow!("starting the timely workers: {e}"))?,
        Some(c) => {
            let sockets = c.connect(cancel).map_err(|e| {
                e.context(format!("process {} of {}: connecting to the other processes", c.process, c.processes()))
            })?;
            let hooks = Hooks::default();
            let local = ProcessBuilder::new_typed_vector(threads, hooks.refill.clone(), hooks.spill.clone());
            let (builders, comms) = initialize_networking_from_sockets(local, sockets, c.process, threads, hooks)
                .map_err(|e| anyhow!("starting timely's network threads: {e}"))?;
            (builders.into_iter().map(AllocatorBuilder::Tcp).collect(), Box::new(comms))
        }
    };
    quiet_timely_panics();
    let since = panics_seen();
    let guards = initialize_from(builders, others, move |allocator| {
        let mut worker = Worker::new(timely::WorkerConfig::default(), allocator, Some(std::time::Instant::now()));
        let out = func(&mut worker);
        while worker.has_dataflows() {
            worker.step_or_park(Some(Duration::from_millis(10)));
        }
        out
    })
    .map_err(|e| anyhow!("starting the timely workers: {e}"))?;
    // Joining also joins timely's network threads, and panics when one did (a connection
    // broke): on a thread of its own, named so that the panic is not printed either.
    let joined = std::thread::Builder::new()
        .name("timely:join".into())
        .spawn(move || guards.join())
        .map_err(|e| anyhow!("starting a thread: {e}"))?
        .join();
    let reason = |fallback: String| {
        let seen = TIMELY_PANICS.lock().unwrap_or_else(|e| e.into_inner());
        let new = seen.get(since..).unwrap_or(&[]);
        // A broken connection is the cause; the workers' poisoned queues follow from it.
        new.iter().find(|m| m.contains("communication error")).or(new.first()).cloned().unwrap_or(fallback)
    };
    let where_ = cluster.map(|c| format!("process {} of {}: ", c.process, c.processes())).unwrap_or_default();
    let results = match joined {
        Ok(results) => results,
        Err(panic) => {
            let why = reason(panic_message(panic.as_ref()));
            return Err(anyhow!("{where_}the dataflow failed (another process died or left?): {why}"));
        }
    };
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        match r {
            Ok(v) => out.push(v),
            Err(e) => return Err(anyhow!("{where_}a timely worker failed: {}", reason(e))),
        }
    }
    Ok(out)
}

/// Messages of panics on timely's threads (workers, network, the join), in order.
static TIMELY_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn panics_seen() -> usize {
    TIMELY_PANICS.lock().unwrap_or_else(|e| e.into_inner()).len()
}

/// Panics on timely's threads are kept for the stage's error instead of printed: one dead
/// process makes every thread of the others panic, each with a backtrace.
fn quiet_timely_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name().is_some_and(|n| n.starts_with("timely:")) {
                let text = info.payload_as_str().map(str::to_string).unwrap_or_else(|| panic_message(info.payload()));
                TIMELY_PANICS.lock().unwrap_or_else(|e| e.into_inner()).push(text);
            } else {
                previous(info);
            }
        }));
    });
}
