//! The `questions` table in Arrow: its schema, a row builder and a tolerant reader.
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `id` | string | stable, content- or source-derived id |
//! | `source` | string | `medqa`, `medmcqa`, `synthetic`, … |
//! | `language` | string | BCP-47-ish code (`en`, `zh`) |
//! | `question` | string | the stem |
//! | `context` | string? | supporting text (PubMedQA abstract) |
//! | `options` | list of {label, text} | the choices, labels `A`, `B`, … |
//! | `answer` | string | the correct label; several labels joined by `,` when `multi_answer` |
//! | `multi_answer` | bool | the item has a set of correct labels (CMExam) |
//! | `explanation` | string? | the source's explanation |
//! | `subject` | string? | subject or topic |
//! | `difficulty` | string? | `easy`, `moderate`, `difficult` |
//! | `difficulty_evidence` | string? | why (judge rationale or pass rate), JSON |
//! | `kg_path` | list of string | entity and relation ids of the KG path (synthetic items) |
//! | `parents` | list of string | ids of the rows the item came from (lineage) |
//! | `meta` | string? | other source fields, JSON |

use std::sync::{Arc, LazyLock};

use anyhow::{Context, anyhow};
use arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBuilder, ListArray, ListBuilder, RecordBatch, StringArray, StringBuilder,
    StructArray, StructBuilder,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};

use crate::item::{Choice, Question};

fn option_fields() -> Fields {
    Fields::from(vec![Field::new("label", DataType::Utf8, false), Field::new("text", DataType::Utf8, false)])
}

/// The type of the `options` column: a list of {label, text}.
pub fn options_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Struct(option_fields()), true)))
}

/// The type of the `kg_path` and `parents` columns: a list of strings.
pub fn string_list_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

/// The columns in order: name, Arrow type, nullable.
pub fn columns() -> Vec<(&'static str, DataType, bool)> {
    vec![
        ("id", DataType::Utf8, false),
        ("source", DataType::Utf8, false),
        ("language", DataType::Utf8, false),
        ("question", DataType::Utf8, false),
        ("context", DataType::Utf8, true),
        ("options", options_type(), false),
        ("answer", DataType::Utf8, false),
        ("multi_answer", DataType::Boolean, false),
        ("explanation", DataType::Utf8, true),
        ("subject", DataType::Utf8, true),
        ("difficulty", DataType::Utf8, true),
        ("difficulty_evidence", DataType::Utf8, true),
        ("kg_path", string_list_type(), false),
        ("parents", string_list_type(), false),
        ("meta", DataType::Utf8, true),
    ]
}

/// The columns an input port reading questions requires (the rest is optional on input).
pub fn required_input_columns() -> Vec<(&'static str, DataType, bool)> {
    columns().into_iter().filter(|c| ["id", "question", "options", "answer"].contains(&c.0)).collect()
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(columns().into_iter().map(|(n, t, null)| Field::new(n, t, null)).collect::<Vec<_>>()))
});

/// The Arrow schema of the `questions` table.
pub fn schema() -> SchemaRef {
    SCHEMA.clone()
}

/// Builds a `questions` table row by row.
pub struct QuestionsBuilder {
    id: StringBuilder,
    source: StringBuilder,
    language: StringBuilder,
    question: StringBuilder,
    context: StringBuilder,
    options: ListBuilder<StructBuilder>,
    answer: StringBuilder,
    multi: BooleanBuilder,
    explanation: StringBuilder,
    subject: StringBuilder,
    difficulty: StringBuilder,
    evidence: StringBuilder,
    kg_path: ListBuilder<StringBuilder>,
    parents: ListBuilder<StringBuilder>,
    meta: StringBuilder,
    rows: usize,
}

impl Default for QuestionsBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl QuestionsBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        let opt = StructBuilder::from_fields(option_fields(), 0);
        let list_field = Arc::new(Field::new("item", DataType::Struct(option_fields()), true));
        QuestionsBuilder {
            id: StringBuilder::new(),
            source: StringBuilder::new(),
            language: StringBuilder::new(),
            question: StringBuilder::new(),
            context: StringBuilder::new(),
            options: ListBuilder::new(opt).with_field(list_field),
            answer: StringBuilder::new(),
            multi: BooleanBuilder::new(),
            explanation: StringBuilder::new(),
            subject: StringBuilder::new(),
            difficulty: StringBuilder::new(),
            evidence: StringBuilder::new(),
            kg_path: ListBuilder::new(StringBuilder::new()),
            parents: ListBuilder::new(StringBuilder::new()),
            meta: StringBuilder::new(),
            rows: 0,
        }
    }

    /// Rows appended so far.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no row was appended.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends one item.
    pub fn push(&mut self, q: &Question) {
        self.id.append_value(&q.id);
        self.source.append_value(&q.source);
        self.language.append_value(&q.language);
        self.question.append_value(&q.question);
        self.context.append_option(q.context.as_deref());
        for c in &q.options {
            let s = self.options.values();
            if let Some(b) = s.field_builder::<StringBuilder>(0) {
                b.append_value(&c.label);
            }
            if let Some(b) = s.field_builder::<StringBuilder>(1) {
                b.append_value(&c.text);
            }
            s.append(true);
        }
        self.options.append(true);
        self.answer.append_value(&q.answer);
        self.multi.append_value(q.multi_answer);
        self.explanation.append_option(q.explanation.as_deref());
        self.subject.append_option(q.subject.as_deref());
        self.difficulty.append_option(q.difficulty.as_deref());
        self.evidence.append_option(q.difficulty_evidence.as_deref());
        for p in &q.kg_path {
            self.kg_path.values().append_value(p);
        }
        self.kg_path.append(true);
        for p in &q.parents {
            self.parents.values().append_value(p);
        }
        self.parents.append(true);
        self.meta.append_option(q.meta.as_deref());
        self.rows += 1;
    }

    /// The rows as one record batch of [`schema`].
    pub fn finish(mut self) -> anyhow::Result<RecordBatch> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.id.finish()),
            Arc::new(self.source.finish()),
            Arc::new(self.language.finish()),
            Arc::new(self.question.finish()),
            Arc::new(self.context.finish()),
            Arc::new(self.options.finish()),
            Arc::new(self.answer.finish()),
            Arc::new(self.multi.finish()),
            Arc::new(self.explanation.finish()),
            Arc::new(self.subject.finish()),
            Arc::new(self.difficulty.finish()),
            Arc::new(self.evidence.finish()),
            Arc::new(self.kg_path.finish()),
            Arc::new(self.parents.finish()),
            Arc::new(self.meta.finish()),
        ];
        RecordBatch::try_new(schema(), columns).context("building the questions table")
    }
}

/// A record batch of [`schema`] from items.
pub fn to_batch(items: &[Question]) -> anyhow::Result<RecordBatch> {
    let mut b = QuestionsBuilder::new();
    for q in items {
        b.push(q);
    }
    b.finish()
}

fn str_col(batch: &RecordBatch, name: &str) -> anyhow::Result<Option<StringArray>> {
    match batch.column_by_name(name) {
        None => Ok(None),
        Some(c) => {
            let c = cast(c, &DataType::Utf8).with_context(|| format!("column `{name}` is not text"))?;
            Ok(c.as_any().downcast_ref::<StringArray>().cloned())
        }
    }
}

fn opt_str(col: &Option<StringArray>, i: usize) -> Option<String> {
    col.as_ref().and_then(|c| c.is_valid(i).then(|| c.value(i).to_string()))
}

fn str_list(batch: &RecordBatch, name: &str) -> anyhow::Result<Option<ListArray>> {
    match batch.column_by_name(name) {
        None => Ok(None),
        Some(c) => {
            let l = c.as_any().downcast_ref::<ListArray>().ok_or_else(|| anyhow!("column `{name}` is not a list"))?;
            let values =
                cast(l.values(), &DataType::Utf8).with_context(|| format!("column `{name}` is not a list of text"))?;
            let field = Arc::new(Field::new("item", DataType::Utf8, true));
            Ok(Some(ListArray::try_new(field, l.offsets().clone(), values, l.nulls().cloned())?))
        }
    }
}

fn list_strings(col: &Option<ListArray>, i: usize) -> Vec<String> {
    let Some(l) = col else { return Vec::new() };
    if l.is_null(i) {
        return Vec::new();
    }
    let v = l.value(i);
    let Some(s) = v.as_any().downcast_ref::<StringArray>() else { return Vec::new() };
    (0..s.len()).filter(|&j| s.is_valid(j)).map(|j| s.value(j).to_string()).collect()
}

/// Reads record batches of questions into items. Tolerant of tables from `load` or `sql`:
/// only `id`, `question`, `options` (list of {label, text}) and `answer` are required;
/// other columns default (`source` from `default_source`).
pub fn from_batches<'a>(
    batches: impl IntoIterator<Item = &'a RecordBatch>,
    default_source: &str,
) -> anyhow::Result<Vec<Question>> {
    let mut out = Vec::new();
    for batch in batches {
        read_batch(batch, default_source, &mut out)?;
    }
    Ok(out)
}

fn read_batch(batch: &RecordBatch, default_source: &str, out: &mut Vec<Question>) -> anyhow::Result<()> {
    let need = |name: &str| -> anyhow::Result<StringArray> {
        str_col(batch, name)?.ok_or_else(|| anyhow!("the questions table has no `{name}` column"))
    };
    let id = need("id")?;
    let question = need("question")?;
    let answer = need("answer")?;
    let source = str_col(batch, "source")?;
    let language = str_col(batch, "language")?;
    let context = str_col(batch, "context")?;
    let explanation = str_col(batch, "explanation")?;
    let subject = str_col(batch, "subject")?;
    let difficulty = str_col(batch, "difficulty")?;
    let evidence = str_col(batch, "difficulty_evidence")?;
    let meta = str_col(batch, "meta")?;
    let kg_path = str_list(batch, "kg_path")?;
    let parents = str_list(batch, "parents")?;
    let multi: Option<BooleanArray> = match batch.column_by_name("multi_answer") {
        Some(c) => cast(c, &DataType::Boolean)?.as_any().downcast_ref::<BooleanArray>().cloned(),
        None => None,
    };
    let options_col =
        batch.column_by_name("options").ok_or_else(|| anyhow!("the questions table has no `options` column"))?;
    let options = options_col
        .as_any()
        .downcast_ref::<ListArray>()
        .ok_or_else(|| anyhow!("`options` must be a list of {{label, text}}, found {}", options_col.data_type()))?;
    let structs = options
        .values()
        .as_any()
        .downcast_ref::<StructArray>()
        .ok_or_else(|| anyhow!("`options` must be a list of {{label, text}}, found {}", options_col.data_type()))?;
    let labels = structs.column_by_name("label").ok_or_else(|| anyhow!("`options` items have no `label`"))?;
    let texts = structs.column_by_name("text").ok_or_else(|| anyhow!("`options` items have no `text`"))?;
    let labels = cast(labels, &DataType::Utf8)?;
    let texts = cast(texts, &DataType::Utf8)?;
    let labels = labels.as_any().downcast_ref::<StringArray>().ok_or_else(|| anyhow!("option labels are not text"))?;
    let texts = texts.as_any().downcast_ref::<StringArray>().ok_or_else(|| anyhow!("option texts are not text"))?;
    let offsets = options.value_offsets();
    for i in 0..batch.num_rows() {
        let mut opts = Vec::new();
        if options.is_valid(i) {
            for j in offsets[i] as usize..offsets[i + 1] as usize {
                let l = if labels.is_valid(j) { labels.value(j) } else { "" };
                let t = if texts.is_valid(j) { texts.value(j) } else { "" };
                opts.push(Choice::new(l, t));
            }
        }
        out.push(Question {
            id: if id.is_valid(i) { id.value(i).to_string() } else { String::new() },
            source: opt_str(&source, i).unwrap_or_else(|| default_source.to_string()),
            language: opt_str(&language, i).unwrap_or_else(|| "en".to_string()),
            question: if question.is_valid(i) { question.value(i).to_string() } else { String::new() },
            context: opt_str(&context, i),
            options: opts,
            answer: if answer.is_valid(i) { answer.value(i).to_string() } else { String::new() },
            multi_answer: multi.as_ref().is_some_and(|m| m.is_valid(i) && m.value(i)),
            explanation: opt_str(&explanation, i),
            subject: opt_str(&subject, i),
            difficulty: opt_str(&difficulty, i),
            difficulty_evidence: opt_str(&evidence, i),
            kg_path: list_strings(&kg_path, i),
            parents: list_strings(&parents, i),
            meta: opt_str(&meta, i),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let q = Question {
            id: "x".into(),
            source: "s".into(),
            language: "en".into(),
            question: "Which?".into(),
            context: Some("ctx".into()),
            options: vec![Choice::new("A", "one"), Choice::new("B", "two")],
            answer: "A,B".into(),
            multi_answer: true,
            kg_path: vec!["e1".into(), "r1".into()],
            parents: vec!["r1".into()],
            ..Default::default()
        };
        let batch = to_batch(&[q.clone(), Question { id: "y".into(), ..q.clone() }]).unwrap();
        assert_eq!(batch.num_rows(), 2);
        let back = from_batches([&batch], "z").unwrap();
        assert_eq!(back[0], q);
        assert_eq!(back[0].answers(), vec!["A", "B"]);
    }
}
