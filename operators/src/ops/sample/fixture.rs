//! A generated medical-shaped knowledge graph for tests and benchmarks: diseases present
//! symptoms, are diagnosed by tests and treated by drugs, with skewed (Zipf-like)
//! popularity so that degrees are long-tailed like a real graph's.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, ListBuilder, RecordBatch, StringArray, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema};
use fleming_artifacts::Table;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `entities` and `relations` tables (DESIGN columns) of a graph of about `n` entities.
pub fn graph(n: usize, seed: u64) -> anyhow::Result<(Table, Table)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let kinds = [("disease", 0.3), ("symptom", 0.25), ("test", 0.15), ("drug", 0.3)];
    let mut ids: Vec<Vec<String>> = vec![Vec::new(); 4];
    let mut ent_id = Vec::new();
    let mut ent_name = Vec::new();
    let mut ent_type = Vec::new();
    for (k, (t, share)) in kinds.iter().enumerate() {
        let count = ((n as f64 * share) as usize).max(3);
        for i in 0..count {
            let id = format!("{}-{i}", &t[..3]);
            ids[k].push(id.clone());
            ent_id.push(id);
            ent_name.push(format!("{t} {i}"));
            ent_type.push(t.to_string());
        }
    }
    // Popular entities first: index = floor(len * u^2).
    let zipf = |rng: &mut ChaCha8Rng, len: usize| ((len as f64) * rng.random::<f64>().powi(2)) as usize;
    let mut rel = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut seen = std::collections::HashSet::new();
    let mut push = |s: &str, p: &str, o: &str| {
        if seen.insert((s.to_string(), p.to_string(), o.to_string())) {
            rel.0.push(format!("r{}", rel.0.len()));
            rel.1.push(s.to_string());
            rel.2.push(p.to_string());
            rel.3.push(o.to_string());
        }
    };
    for d in &ids[0] {
        for _ in 0..rng.random_range(2..7) {
            let s = &ids[1][zipf(&mut rng, ids[1].len())];
            push(d, "presents_symptom", s);
        }
        for _ in 0..rng.random_range(1..3) {
            let t = &ids[2][zipf(&mut rng, ids[2].len())];
            push(d, "diagnosed_by", t);
        }
        for _ in 0..rng.random_range(1..4) {
            let m = &ids[3][zipf(&mut rng, ids[3].len())];
            push(m, "treats", d);
        }
    }
    let mut degree = std::collections::HashMap::<&str, i64>::new();
    for (s, o) in rel.1.iter().zip(&rel.3) {
        *degree.entry(s).or_default() += 1;
        *degree.entry(o).or_default() += 1;
    }
    let mut aliases = ListBuilder::new(StringBuilder::new());
    let mut pages = ListBuilder::new(StringBuilder::new());
    for name in &ent_name {
        aliases.values().append_value(name.to_uppercase());
        aliases.append(true);
        pages.values().append_value(format!("page-{name}"));
        pages.append(true);
    }
    let degs: Vec<i64> = ent_id.iter().map(|i| degree.get(i.as_str()).copied().unwrap_or(0)).collect();
    let list = |n: &str| Field::new(n, DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))), true);
    let es = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("type", DataType::Utf8, true),
        list("aliases"),
        Field::new("description", DataType::Utf8, true),
        Field::new("degree", DataType::Int64, true),
        Field::new("frequency", DataType::Int64, true),
        list("pages"),
    ]));
    let count = ent_id.len();
    let ecols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(ent_id)),
        Arc::new(StringArray::from(ent_name)),
        Arc::new(StringArray::from(ent_type)),
        Arc::new(aliases.finish()),
        Arc::new(StringArray::from(vec![None::<&str>; count])),
        Arc::new(Int64Array::from(degs.clone())),
        Arc::new(Int64Array::from(degs)),
        Arc::new(pages.finish()),
    ];
    let rs = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("subject", DataType::Utf8, false),
        Field::new("predicate", DataType::Utf8, true),
        Field::new("object", DataType::Utf8, false),
        Field::new("evidence_page", DataType::Utf8, true),
        Field::new("evidence_section", DataType::Utf8, true),
        Field::new("evidence_field", DataType::Utf8, true),
        Field::new("confidence", DataType::Float64, true),
    ]));
    let m = rel.0.len();
    let rcols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(rel.0)),
        Arc::new(StringArray::from(rel.1)),
        Arc::new(StringArray::from(rel.2)),
        Arc::new(StringArray::from(rel.3)),
        Arc::new(StringArray::from(vec![Some("page"); m])),
        Arc::new(StringArray::from(vec![Some("Signs and symptoms"); m])),
        Arc::new(StringArray::from(vec![Some("text"); m])),
        Arc::new(Float64Array::from(vec![0.9; m])),
    ];
    Ok((
        Table::new(es.clone(), vec![RecordBatch::try_new(es, ecols)?]),
        Table::new(rs.clone(), vec![RecordBatch::try_new(rs, rcols)?]),
    ))
}
