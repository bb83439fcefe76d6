//! A table output's schema and one page of its rows, read straight from its Parquet file
//! (only the row groups the page needs are decoded), rendered as HTML tables.

use std::fmt::Write;
use std::path::Path;

use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::report::html::{clip, escape};
use crate::report::page::url_escape;

/// Rows per page.
pub(crate) const PAGE: usize = 50;
/// Characters shown of one cell (the rest is in the cell's tooltip).
const CELL: usize = 300;

/// Column names and types, from the file's footer.
pub(crate) fn schema(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let file = std::fs::File::open(path)?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    Ok(builder.schema().fields().iter().map(|f| (f.name().clone(), f.data_type().to_string())).collect())
}

/// Rows `page * PAGE ..` (at most [`PAGE`]).
pub(crate) fn page(path: &Path, page: usize) -> anyhow::Result<Vec<RecordBatch>> {
    let file = std::fs::File::open(path)?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?
        .with_offset(page.saturating_mul(PAGE))
        .with_limit(PAGE)
        .with_batch_size(PAGE)
        .build()?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

/// Batches as one HTML table; `first_row` numbers the rows. With `lineage` (`stage.port`),
/// each `id` links to that record's lineage.
pub(crate) fn batches_html(batches: &[RecordBatch], first_row: usize, lineage: Option<&str>) -> anyhow::Result<String> {
    let mut s = String::from("<div class=\"scroll\"><table class=\"rows\">");
    let Some(first) = batches.first() else { return Ok("<p>No rows.</p>".into()) };
    s.push_str("<tr><th>#</th>");
    for f in first.schema().fields() {
        let _ = write!(s, "<th>{}</th>", escape(f.name()));
    }
    s.push_str("</tr>\n");
    let options = FormatOptions::default().with_null("∅");
    let mut row = first_row;
    for b in batches {
        let formatters: Vec<ArrayFormatter<'_>> =
            b.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options)).collect::<Result<_, _>>()?;
        let id_col = b.schema().index_of("id").ok();
        for i in 0..b.num_rows() {
            let _ = write!(s, "<tr data-row=\"{row}\"><td class=\"n\">{row}</td>");
            for (k, f) in formatters.iter().enumerate() {
                let text = f.value(i).to_string();
                match lineage {
                    Some(target) if Some(k) == id_col && b.column(k).is_valid(i) => {
                        let _ = write!(
                            s,
                            "<td class=\"cell\"><a href=\"/lineage?target={}&amp;id={}\">{}</a></td>",
                            escape(&url_escape(target)),
                            escape(&url_escape(&text)),
                            escape(&text)
                        );
                    }
                    _ => cell(&mut s, &text),
                }
            }
            s.push_str("</tr>\n");
            row += 1;
        }
    }
    s.push_str("</table></div>\n");
    Ok(s)
}

/// JSON objects (a check's failing rows) as an HTML table over the union of their keys.
pub(crate) fn json_rows_html(rows: &[serde_json::Value]) -> String {
    let mut keys: Vec<String> = Vec::new();
    for r in rows {
        if let Some(m) = r.as_object() {
            for k in m.keys() {
                if !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
        }
    }
    let mut s = String::from("<div class=\"scroll\"><table class=\"rows\"><tr>");
    for k in &keys {
        let _ = write!(s, "<th>{}</th>", escape(k));
    }
    s.push_str("</tr>\n");
    for r in rows {
        s.push_str("<tr>");
        for k in &keys {
            let text = match r.get(k) {
                None | Some(serde_json::Value::Null) => "∅".to_string(),
                Some(serde_json::Value::String(v)) => v.clone(),
                Some(v) => v.to_string(),
            };
            cell(&mut s, &text);
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</table></div>\n");
    s
}

fn cell(s: &mut String, text: &str) {
    if text.chars().count() > CELL {
        let _ = write!(
            s,
            "<td class=\"cell\" title=\"{}\">{}</td>",
            escape(&clip(text, 4 * CELL)),
            escape(&clip(text, CELL))
        );
    } else {
        let _ = write!(s, "<td class=\"cell\">{}</td>", escape(text));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn pages_read_only_their_rows_and_cells_are_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let n = 120;
        let schema =
            Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false), Field::new("v", DataType::Utf8, true)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new((0..n).collect::<Int64Array>()),
                Arc::new(
                    (0..n).map(|i| if i == 55 { None } else { Some(format!("<b>{i}</b>")) }).collect::<StringArray>(),
                ),
            ],
        )
        .unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        assert_eq!(schema_of(&path), [("k".to_string(), "Int64".to_string()), ("v".into(), "Utf8".into())]);
        let second = page(&path, 1).unwrap();
        assert_eq!(second.iter().map(|b| b.num_rows()).sum::<usize>(), PAGE);
        let html = batches_html(&second, PAGE, None).unwrap();
        assert!(
            html.contains(
                "<tr data-row=\"50\"><td class=\"n\">50</td><td class=\"cell\">50</td><td class=\"cell\">&lt;b&gt;50"
            ),
            "{html}"
        );
        assert!(html.contains("∅"), "{html}");
        let last = page(&path, 2).unwrap();
        assert_eq!(last.iter().map(|b| b.num_rows()).sum::<usize>(), 20);
        assert!(page(&path, 9).unwrap().iter().all(|b| b.num_rows() == 0));
    }

    fn schema_of(path: &Path) -> Vec<(String, String)> {
        schema(path).unwrap()
    }
}
