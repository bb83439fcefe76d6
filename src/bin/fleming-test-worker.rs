//! A worker that is not a torch program, to test the dispatch protocol: it runs the
//! `test-worker` operator (copy a table, or crash, fail, hang, or not write its output).

use std::path::Path;
use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use fleming_artifacts::Table;
use fleming_runtime::dispatch::WorkerSession;
use serde::Deserialize;
use serde_json::Map;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 || args[1] != "run" {
        eprintln!("usage: fleming-test-worker run JOB.json");
        std::process::exit(2);
    }
    let session = match WorkerSession::start(Path::new(&args[2]), "fleming-test-worker", env!("CARGO_PKG_VERSION")) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    };
    if let Err(e) = work(&session) {
        session.fail(&format!("{e:#}"));
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The resolved parameters of `test-worker` (declared in `fleming_operators::ops::testing`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    mode: String,
    sleep_ms: u64,
    #[allow(dead_code)]
    tag: String,
}

fn work(s: &WorkerSession) -> anyhow::Result<()> {
    if s.job.op != "test-worker" {
        anyhow::bail!("this worker only runs `test-worker`, not `{}`", s.job.op);
    }
    let params: Params = s.params()?;
    let mode = params.mode;
    let sleep = std::time::Duration::from_millis(params.sleep_ms);
    eprintln!("test worker: mode {mode}, device {:?}", s.job.device);
    let input = s.input_table("table", 0)?;
    let total = input.num_rows() as u64;
    s.progress(0, Some(total), "rows");
    match mode.as_str() {
        "crash" => {
            eprintln!("test worker: crashing on purpose");
            std::process::abort();
        }
        "fail" => anyhow::bail!("failing on purpose"),
        "hang" => loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        },
        _ => {}
    }
    let started_ms = unix_ms();
    std::thread::sleep(sleep);
    if mode != "no-output" {
        let batch = input.concat()?;
        let device = format!(
            "{}:{}",
            s.job.device.kind,
            s.job.device.gpus.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(",")
        );
        let mut fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        // What the process was given, and when it held it (tests of GPU scheduling).
        let visible = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default();
        let held = format!("{started_ms}-{}", unix_ms());
        let mut cols = batch.columns().to_vec();
        for (name, value) in [("device", device), ("visible", visible), ("held_ms", held)] {
            fields.push(Field::new(name, DataType::Utf8, false));
            cols.push(Arc::new(StringArray::from(vec![value; batch.num_rows()])));
        }
        let out = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?;
        s.write_table("table", &Table::from_batch(out))?;
    }
    let mut m = Map::new();
    m.insert("rows".into(), total.into());
    s.metrics(Some(1), m.clone())?;
    s.progress(total, Some(total), "rows");
    s.done(m);
    Ok(())
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}
